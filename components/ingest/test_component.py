"""The ingest component under kfp.local: real subprocess, real artifacts."""

import json
import os

import pytest
from kfp import local
from searchtune.components.ingest.component import ingest

from searchtune import records


@pytest.fixture
def local_runner(tmp_path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=True)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_ingest_component_writes_splits_rejects_and_metrics(local_runner, sample_frame, tmp_path):
    frame = sample_frame.astype({"relevance": object}).copy()
    frame.loc[frame.index[:3], "relevance"] = "oops"
    path = tmp_path / "logs.csv"
    frame.to_csv(path, index=False)
    task = ingest(data=str(path), query_column="search_term", text_columns="product_title, brand",
                  label_column="relevance", positive_threshold=2.5, binary_labels=False, label_min=1.0, label_max=3.0,
                  max_reject_ratio=0.05, encoding="auto", data_version="v1",
                  min_test_queries=2)
    splits = task.outputs["splits"]
    stats = json.loads(open(os.path.join(splits.path, records.IngestStats.FILE)).read())
    assert stats["rows_read"] == len(frame) and stats["rows_rejected"] == 3
    assert splits.metadata["fingerprint"] == stats["fingerprint"] and splits.metadata["data_version"] == "v1"
    assert task.outputs["metrics"].metadata["rows_rejected"] == 3
    assert task.outputs["metrics"].metadata["train_rows"] == stats["splits"]["train"]["rows"]
    assert os.path.exists(os.path.join(task.outputs["rejects"].path, records.REJECTS_FILE))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_ingest_component_fails_on_a_missing_column(local_runner, sample_file, capfd):
    with pytest.raises(RuntimeError, match="FAILURE"):
        ingest(data=sample_file, query_column="query_text", text_columns="product_title", label_column="relevance",
               positive_threshold=2.5, binary_labels=False, label_min=1.0, label_max=3.0, max_reject_ratio=0.05,
               encoding="auto", data_version="v1", min_test_queries=2)
    logged = capfd.readouterr()
    assert "step ingest failed: " in logged.out + logged.err
    assert "missing column(s) 'query_text'" in logged.out + logged.err
