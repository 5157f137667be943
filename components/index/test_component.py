"""The index component under kfp.local: real subprocess, real artifacts (imported model and splits)."""

import json
import os

import pytest
from kfp import dsl, local
from searchtune.components.index.component import index

from searchtune import records


@pytest.fixture
def local_runner(tmp_path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=True)


@dsl.pipeline
def index_only(model_uri: str, splits_uri: str, catalog: str, catalog_id_column: str) -> dsl.Artifact:
    model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model, reimport=False)
    splits = dsl.importer(artifact_uri=splits_uri, artifact_class=dsl.Dataset, reimport=False)
    task = index(model=model.output, splits=splits.output, catalog=catalog, catalog_id_column=catalog_id_column,
                 catalog_text_columns="", text_columns="product_title,brand")
    return task.outputs["product_index"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_index_component_writes_the_index_folder_and_metadata(local_runner, trained_model_dir, splits_dir, sample_file):
    run = index_only(model_uri=trained_model_dir, splits_uri=splits_dir, catalog=sample_file, catalog_id_column="product_uid")
    artifact = run.outputs["Output"]
    assert sorted(os.listdir(artifact.path)) == sorted([records.INDEX_IDS_FILE, records.INDEX_VECTORS_FILE, records.IndexRecord.FILE])
    record = json.loads(open(os.path.join(artifact.path, records.IndexRecord.FILE)).read())
    assert record["kind"] == "flat-ip" and record["catalog"]["id_column"] == "product_uid"
    assert record["catalog"]["text_columns"] == ["product_title", "brand"]
    assert artifact.metadata["products"] == record["count"] > 0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_index_component_fails_on_a_missing_catalog_column(local_runner, trained_model_dir, splits_dir, sample_file, capfd):
    with pytest.raises(RuntimeError, match="FAILURE"):
        index_only(model_uri=trained_model_dir, splits_uri=splits_dir, catalog=sample_file, catalog_id_column="sku")
    logged = capfd.readouterr()
    assert "step index failed: " in logged.out + logged.err
    assert "missing column(s) 'sku'" in logged.out + logged.err
