"""The register step on local and GCS registries: what a version holds, gating, races, the component."""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.ml.stats import compute_statistics
from searchtune.params import GateParams, RunParameters, TrainParams
from searchtune.registry import ModelRegistry
from searchtune.steps.evaluation.gate import decide
from searchtune.steps.register import register_model

MODEL = "searchtune-relevance"
SOURCES = ["gs://logs-bucket/judgements/2024-06-01.parquet", "/data/extra.csv"]


def make_model_dir(folder, tag="m") -> str:
    files = {
        "adapter/adapter_config.json": json.dumps({"r": 4}),
        "adapter/adapter_model.safetensors": f"weights-{tag}" * 100,
        "tokenizer/tokenizer.json": json.dumps({"tag": tag}),
    }
    for name, text in files.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)
    records.ModelRecord(architecture="bi-encoder", base_model=records.BaseModelRef(name_or_path="x", sha256="f" * 64),
                        max_length=64, training=TrainParams(epochs=1).model_dump()).write(str(folder))
    return str(folder)


def make_splits_dir(folder, train_rows=6000) -> str:
    os.makedirs(folder, exist_ok=True)
    train = pd.DataFrame({
        "query": [f"q{i % 300}" for i in range(train_rows)],
        "product_text": [f"product {i}" for i in range(train_rows)],
        "label": [i % 2 for i in range(train_rows)],
        "query_group": [i % 300 for i in range(train_rows)],
    })
    train.to_parquet(os.path.join(folder, "train.parquet"), index=False)
    split = records.SplitStats(rows=train_rows, queries=300, positive_rate=0.5)
    records.IngestStats(fingerprint="sha256:abc123", sources=SOURCES, column_mapping={}, split_fractions={}, rows_read=train_rows,
                        rows_rejected=0, duplicates_dropped=0, rows_kept=train_rows, splits={"train": split}).write(str(folder))
    return str(folder)


def make_run_dir(folder, run_id="run", **parameters) -> str:
    records.RunRecord(run_id=run_id, started_at=records.now(), parameters=RunParameters(**parameters).model_dump(),
                      data_files=[records.DataFile(uri=SOURCES[0], size=10, version="1")], data_version="d" * 64,
                      base_model="x", registry_root="r", code={}).write(str(folder))
    return str(folder)


def make_evaluation_dir(folder, blessed: bool = True, production_version: int | None = None, seed: int = 0) -> str:
    """A real evaluation of synthetic scores: a candidate that beats the base (blessed) or one that does not."""
    rng = np.random.default_rng(seed)
    query = np.repeat(np.arange(60), 6)
    latent = rng.normal(size=len(query))
    label = (latent + 0.5 * rng.normal(size=len(query)) > 0).astype(int)
    base = latent + 2.0 * rng.normal(size=len(query))
    candidate = latent + (0.2 if blessed else 4.0) * rng.normal(size=len(query))
    scores = {"candidate": candidate, "base": base}
    if production_version is not None:
        scores["production"] = candidate + 0.01 * rng.normal(size=len(query))
    statistics = compute_statistics(query, label, scores, logit_models={"candidate", "base"})
    decision = decide(statistics, GateParams(), production_label=f"production v{production_version}", candidate_id="run",
                      production_version=production_version)
    assert decision.blessed == blessed, decision.reason
    drift = records.DriftSummary(reference="r", current="c", drifted_columns=[], columns=5, share_drifted=0.0,
                                 reference_rows=1, current_rows=1)
    records.Evaluation(test_rows=len(query), test_queries=60, production_version=production_version, drift=drift,
                       roc_curve={"fpr": [], "tpr": [], "thresholds": []}, confusion_matrix={}, blessing=decision,
                       model={}).write(str(folder))
    decision.write(str(folder))
    return str(folder)


def register(registry_root, model_dir, splits_dir, evaluation_dir, run_id, tmp_path, **parameters):
    run_dir = make_run_dir(tmp_path / f"run-{run_id}", run_id, **parameters)
    return register_model(registry_root, MODEL, model_dir, splits_dir, evaluation_dir, run_dir)


@pytest.fixture
def inputs(tmp_path):
    return make_model_dir(tmp_path / "model"), make_splits_dir(tmp_path / "splits")


def test_first_registration_holds_everything_and_becomes_production(registry_root, inputs, tmp_path):
    model_dir, splits_dir = inputs
    evaluation_dir = make_evaluation_dir(tmp_path / "eval")
    outcome = register(registry_root, model_dir, splits_dir, evaluation_dir, "run-1", tmp_path, epochs=1, learning_rate=1e-4)
    assert outcome.version == 1 and outcome.promoted is True
    assert (outcome.alias_before, outcome.alias_after) == (None, 1)
    assert outcome.registry_uri == ModelRegistry(registry_root).version_uri(MODEL, 1)
    registry = ModelRegistry(registry_root)
    production = registry.production(MODEL)
    expected = records.Blessing.read(evaluation_dir).gate_estimate()
    assert production["version"] == 1 and production["auc"] == pytest.approx(expected.value)
    assert production["metadata"]["gate_metric"] == "gauc" and production["metadata"]["auc_low"] == pytest.approx(expected.low)
    assert production["run_id"] == "run-1" and production["created_by"] == "searchtune-pipeline"
    assert {f["path"] for f in production["files"]} == {
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "tokenizer/tokenizer.json",
        "searchtune_model.json", "evaluation.json", "blessing.json", "reference_sample.parquet", "lineage.json"}
    dest = tmp_path / "fetched"
    registry.fetch(MODEL, "production", str(dest))
    lineage = records.Lineage.read(str(dest))
    assert lineage.data["fingerprint"] == "sha256:abc123"
    assert lineage.data["sources"] == SOURCES and lineage.data["files"][0]["uri"] == SOURCES[0]
    # Every parameter the run used, not a hand-picked few.
    assert lineage.parameters == RunParameters(epochs=1, learning_rate=1e-4).model_dump()
    assert lineage.base_model.sha256 == "f" * 64 and lineage.blessing.blessed
    assert lineage.run_id == "run-1" and lineage.code["searchtune"]
    sample = pd.read_parquet(dest / "reference_sample.parquet")
    assert list(sample.columns) == ["query", "product_text", "label"] and len(sample) == 5000
    history = registry.alias_history(MODEL)
    assert [(h["version"], h["run_id"], h["moved_by"]) for h in history] == [(1, "run-1", "searchtune-pipeline")]


def test_a_path_with_quotes_and_backslashes_runs_through_registration(registry_root, inputs, tmp_path):
    model_dir, splits_dir = inputs
    odd = 'gs://b/logs/"quoted" \\ back\\slash/*.parquet'
    outcome = register(registry_root, model_dir, splits_dir, make_evaluation_dir(tmp_path / "eval"), "run-q", tmp_path,
                       data=odd)
    lineage = records.Lineage.from_bytes(ModelRegistry(registry_root).read_file(MODEL, outcome.version, "lineage.json"), "lineage")
    assert lineage.parameters["data"] == odd


def test_retried_register_task_reuses_its_version(registry_root, inputs, tmp_path):
    model_dir, splits_dir = inputs
    evaluation_dir = make_evaluation_dir(tmp_path / "eval")
    first = register(registry_root, model_dir, splits_dir, evaluation_dir, "run-1", tmp_path)
    again = register(registry_root, model_dir, splits_dir, evaluation_dir, "run-1", tmp_path)
    assert first.version == again.version == 1 and again.promoted
    assert [v["version"] for v in ModelRegistry(registry_root).versions(MODEL)] == [1]


def test_reference_sample_is_deterministic(tmp_path, inputs):
    model_dir, splits_dir = inputs
    root = str(tmp_path / "registry")
    for run in ("a", "b"):
        register(root, model_dir, splits_dir, make_evaluation_dir(tmp_path / f"eval-{run}"), run, tmp_path)
    registry = ModelRegistry(root)
    assert registry.read_file(MODEL, 1, "reference_sample.parquet") == registry.read_file(MODEL, 2, "reference_sample.parquet")


def test_refuses_unblessed_model_and_leaves_registry_empty(registry_root, inputs, tmp_path):
    model_dir, splits_dir = inputs
    evaluation_dir = make_evaluation_dir(tmp_path / "eval", blessed=False)
    with pytest.raises(SearchtuneError, match="not blessed .*does not beat untuned base"):
        register(registry_root, model_dir, splits_dir, evaluation_dir, "run-1", tmp_path)
    assert storage.list_prefix(registry_root) == []


def test_missing_columns_and_files_are_named(tmp_path, inputs):
    model_dir, splits_dir = inputs
    evaluation_dir = make_evaluation_dir(tmp_path / "eval")
    pd.DataFrame({"query": ["q"], "label": [1]}).to_parquet(os.path.join(splits_dir, "train.parquet"))
    with pytest.raises(SearchtuneError, match=r"train.parquet: missing column\(s\) product_text"):
        register(str(tmp_path / "r"), model_dir, splits_dir, evaluation_dir, "run", tmp_path)
    os.unlink(os.path.join(evaluation_dir, "evaluation.json"))
    with pytest.raises(SearchtuneError, match="evaluation.json: missing"):
        register(str(tmp_path / "r"), model_dir, splits_dir, evaluation_dir, "run", tmp_path)
    assert not os.path.exists(tmp_path / "r" / MODEL / "versions" / "1" / "MANIFEST.json")


def test_production_moved_since_evaluation_is_not_promoted(registry_root, inputs, tmp_path):
    """A candidate is never promoted on a comparison with a model it was not evaluated against."""
    model_dir, splits_dir = inputs
    register(registry_root, model_dir, splits_dir, make_evaluation_dir(tmp_path / "e1"), "run-1", tmp_path)
    # Two runs evaluate against v1; one registers first and moves production to v2.
    first = make_evaluation_dir(tmp_path / "e-first", production_version=1, seed=1)
    second = make_evaluation_dir(tmp_path / "e-second", production_version=1, seed=2)
    assert register(registry_root, model_dir, splits_dir, first, "run-first", tmp_path).promoted
    outcome = register(registry_root, model_dir, splits_dir, second, "run-second", tmp_path)
    assert outcome.version == 3 and outcome.promoted is False
    assert (outcome.alias_before, outcome.alias_after) == (2, 2)
    assert "production moved to v2 after evaluation" in outcome.reason
    assert "evaluated against v1 only" in outcome.reason
    registry = ModelRegistry(registry_root)
    assert registry.version(MODEL, "production")["version"] == 2
    assert [m["version"] for m in registry.versions(MODEL)] == [1, 2, 3]


RACE_CHILD = """
import json
from searchtune.steps.register import register_model
outcome = register_model(*sys.argv[3:9])
print(outcome.model_dump_json())
"""


def test_two_pipeline_runs_registering_at_once(registry_root, tmp_path):
    """Both versions are kept; exactly one becomes production; the other says why not."""
    model_dir = make_model_dir(tmp_path / "model")
    splits_dir = make_splits_dir(tmp_path / "splits", train_rows=200)
    register(registry_root, model_dir, splits_dir, make_evaluation_dir(tmp_path / "e1"), "seed", tmp_path)
    evaluations = [make_evaluation_dir(tmp_path / f"e-{run}", production_version=1, seed=i) for i, run in enumerate(("p1", "p2"))]
    run_dirs = [make_run_dir(tmp_path / f"run-{run}", run) for run in ("p1", "p2")]
    go = tmp_path / "go"
    prelude = "import os, sys, time\nopen(sys.argv[1], 'w').close()\nwhile not os.path.exists(sys.argv[2]): time.sleep(0.001)\n"
    children = [subprocess.Popen(
        [sys.executable, "-c", prelude + textwrap.dedent(RACE_CHILD), str(tmp_path / f"ready-{run}"), str(go),
         registry_root, MODEL, model_dir, splits_dir, evaluation, run_dir],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for run, evaluation, run_dir in zip(("p1", "p2"), evaluations, run_dirs, strict=True)]
    while not all((tmp_path / f"ready-{run}").exists() for run in ("p1", "p2")):
        time.sleep(0.01)
    go.touch()
    outcomes = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        outcomes.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(o["version"] for o in outcomes) == [2, 3]
    winners = [o for o in outcomes if o["promoted"]]
    losers = [o for o in outcomes if not o["promoted"]]
    assert len(winners) == 1 and len(losers) == 1
    assert f"production moved to v{winners[0]['version']} after evaluation" in losers[0]["reason"]
    registry = ModelRegistry(registry_root)
    assert registry.version(MODEL, "production")["version"] == winners[0]["version"]
    assert [m["version"] for m in registry.versions(MODEL)] == [1, 2, 3]
    assert [h["version"] for h in registry.alias_history(MODEL)] == [1, winners[0]["version"]]


@pytest.mark.filterwarnings("ignore:You may be attemping to run a task that uses custom:RuntimeWarning")
def test_component_runs_under_kfp_local(tmp_path):
    """The KFP component, run by kfp.local's SubprocessRunner on importer-provided artifacts."""
    from kfp import dsl, local
    from searchtune.components.register.component import register

    model_dir = make_model_dir(tmp_path / "model")
    splits_dir = make_splits_dir(tmp_path / "splits", train_rows=50)
    evaluation_dir = make_evaluation_dir(tmp_path / "eval")
    run_dir = make_run_dir(tmp_path / "run", "kfp-run", epochs=2)
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    from searchtune import records

    records.IndexRecord(kind="none", reason="no catalog in this test").write(str(index_dir))
    root = str(tmp_path / "registry")

    @dsl.pipeline(name="register-only")
    def register_only() -> int:
        model = dsl.importer(artifact_uri=model_dir, artifact_class=dsl.Model)
        splits = dsl.importer(artifact_uri=splits_dir, artifact_class=dsl.Dataset)
        evaluation = dsl.importer(artifact_uri=evaluation_dir, artifact_class=dsl.Artifact)
        run = dsl.importer(artifact_uri=run_dir, artifact_class=dsl.Artifact)
        index = dsl.importer(artifact_uri=str(index_dir), artifact_class=dsl.Artifact)
        task = register(model=model.output, splits=splits.output, evaluation=evaluation.output, run=run.output,
                        product_index=index.output, registry_root=root, model_name=MODEL)
        return task.outputs["Output"]

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "pipeline-root"))
    task = register_only()
    assert task.output == 1
    production = ModelRegistry(root).production(MODEL)
    assert production["version"] == 1 and production["run_id"] == "kfp-run"
    outcome_files = list((tmp_path / "pipeline-root").rglob("registration.json"))
    assert len(outcome_files) == 1
    assert json.loads(outcome_files[0].read_text())["promoted"] is True
    lineage = json.loads(ModelRegistry(root).read_file(MODEL, 1, "lineage.json"))
    assert lineage["parameters"]["epochs"] == 2 and len(lineage["parameters"]) == len(RunParameters.model_fields)
    stored_index = json.loads(ModelRegistry(root).read_file(MODEL, 1, "index/index.json"))
    assert stored_index["kind"] == "none" and stored_index["reason"] == "no catalog in this test"
