"""The register step on local and GCS registries: what a version holds, gating, races, the component."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry import ModelRegistry
from searchtune.steps import blessing
from searchtune.steps.register import register_model

MODEL = "searchtune-relevance"
SOURCES = ["gs://logs-bucket/judgements/2024-06-01.parquet", "/data/extra.csv"]


def make_model_dir(folder, tag="m") -> str:
    files = {
        "adapter/adapter_config.json": json.dumps({"r": 4}),
        "adapter/adapter_model.safetensors": f"weights-{tag}" * 100,
        "tokenizer/tokenizer.json": json.dumps({"tag": tag}),
        "searchtune_model.json": json.dumps({"architecture": "bi-encoder", "base_model": {"name_or_path": "x"}}),
        "training_metrics.json": json.dumps({"epochs": 1, "loss": 0.3}),
    }
    for name, text in files.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)
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
    with open(os.path.join(folder, "stats.json"), "w") as handle:
        json.dump({"fingerprint": "sha256:abc123", "sources": SOURCES,
                   "splits": {"train": {"rows": train_rows}}}, handle)
    return str(folder)


def make_evaluation_dir(folder, auc, champion=None, min_auc=0.6, max_auc_drop=0.0) -> str:
    os.makedirs(folder, exist_ok=True)
    decision = blessing.decide(auc, min_auc, max_auc_drop, champion, candidate_id="run")
    with open(os.path.join(folder, "blessing.json"), "w") as handle:
        json.dump(decision, handle)
    with open(os.path.join(folder, "evaluation.json"), "w") as handle:
        json.dump({"test_rows": 100, "candidate": {"roc_auc": auc}}, handle)
    return str(folder)


@pytest.fixture
def inputs(tmp_path):
    return make_model_dir(tmp_path / "model"), make_splits_dir(tmp_path / "splits")


def test_first_registration_holds_everything_and_becomes_production(registry_root, inputs, tmp_path):
    model_dir, splits_dir = inputs
    evaluation_dir = make_evaluation_dir(tmp_path / "eval", 0.8)
    outcome = register_model(registry_root, MODEL, model_dir, splits_dir, evaluation_dir, "run-1",
                             {"epochs": 1, "learning_rate": 1e-4})
    assert outcome["version"] == 1 and outcome["promoted"] is True
    assert (outcome["alias_before"], outcome["alias_after"]) == (None, 1)
    assert outcome["registry_uri"] == ModelRegistry(registry_root).version_uri(MODEL, 1)
    registry = ModelRegistry(registry_root)
    production = registry.production(MODEL)
    assert production["version"] == 1 and production["auc"] == pytest.approx(0.8)
    assert production["run_id"] == "run-1" and production["created_by"] == "searchtune-pipeline"
    assert {f["path"] for f in production["files"]} == {
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "tokenizer/tokenizer.json",
        "searchtune_model.json", "training_metrics.json", "evaluation.json", "blessing.json",
        "reference_sample.parquet", "lineage.json"}
    dest = tmp_path / "fetched"
    registry.fetch(MODEL, "production", str(dest))
    lineage = json.loads((dest / "lineage.json").read_text())
    assert lineage["data"]["fingerprint"] == "sha256:abc123"
    assert lineage["data"]["sources"] == SOURCES
    assert lineage["parameters"] == {"epochs": 1, "learning_rate": 1e-4}
    assert lineage["run_id"] == "run-1" and lineage["code"]["searchtune"]
    sample = pd.read_parquet(dest / "reference_sample.parquet")
    assert list(sample.columns) == ["query", "product_text", "label"] and len(sample) == 5000
    history = registry.alias_history(MODEL)
    assert [(h["version"], h["run_id"], h["moved_by"]) for h in history] == [(1, "run-1", "searchtune-pipeline")]


def test_retried_register_task_reuses_its_version(registry_root, inputs, tmp_path):
    model_dir, splits_dir = inputs
    evaluation_dir = make_evaluation_dir(tmp_path / "eval", 0.8)
    first = register_model(registry_root, MODEL, model_dir, splits_dir, evaluation_dir, "run-1", {})
    again = register_model(registry_root, MODEL, model_dir, splits_dir, evaluation_dir, "run-1", {})
    assert first["version"] == again["version"] == 1 and again["promoted"]
    assert [v["version"] for v in ModelRegistry(registry_root).versions(MODEL)] == [1]


def test_reference_sample_is_deterministic(tmp_path, inputs):
    model_dir, splits_dir = inputs
    root = str(tmp_path / "registry")
    for run in ("a", "b"):
        register_model(root, MODEL, model_dir, splits_dir, make_evaluation_dir(tmp_path / f"eval-{run}", 0.8),
                       run, {})
    registry = ModelRegistry(root)
    assert registry.read_file(MODEL, 1, "reference_sample.parquet") == registry.read_file(MODEL, 2, "reference_sample.parquet")


def test_refuses_unblessed_model_and_leaves_registry_empty(registry_root, inputs, tmp_path):
    model_dir, splits_dir = inputs
    evaluation_dir = make_evaluation_dir(tmp_path / "eval", 0.55)  # below min_auc 0.6
    with pytest.raises(SearchtuneError, match="not blessed .*below min_auc"):
        register_model(registry_root, MODEL, model_dir, splits_dir, evaluation_dir, "run-1", {})
    assert storage.list_prefix(registry_root) == []


def test_missing_columns_and_files_are_named(tmp_path, inputs):
    model_dir, splits_dir = inputs
    evaluation_dir = make_evaluation_dir(tmp_path / "eval", 0.8)
    pd.DataFrame({"query": ["q"], "label": [1]}).to_parquet(os.path.join(splits_dir, "train.parquet"))
    with pytest.raises(SearchtuneError, match=r"train.parquet: missing column\(s\) product_text"):
        register_model(str(tmp_path / "r"), MODEL, model_dir, splits_dir, evaluation_dir, "run", {})
    os.unlink(os.path.join(evaluation_dir, "evaluation.json"))
    with pytest.raises(SearchtuneError, match="evaluation.json: missing"):
        register_model(str(tmp_path / "r"), MODEL, model_dir, splits_dir, evaluation_dir, "run", {})
    assert not os.path.exists(tmp_path / "r" / MODEL / "versions" / "1" / "MANIFEST.json")


def test_production_moved_since_evaluation_is_regated(registry_root, inputs, tmp_path):
    model_dir, splits_dir = inputs
    register_model(registry_root, MODEL, model_dir, splits_dir, make_evaluation_dir(tmp_path / "e1", 0.70), "run-1", {})
    # Two runs evaluate against v1 (AUC 0.70); the stronger one registers first.
    weaker = make_evaluation_dir(tmp_path / "e-weak", 0.75, champion={"version": 1, "auc": 0.70})
    stronger = make_evaluation_dir(tmp_path / "e-strong", 0.90, champion={"version": 1, "auc": 0.70})
    assert register_model(registry_root, MODEL, model_dir, splits_dir, stronger, "run-strong", {})["promoted"]
    outcome = register_model(registry_root, MODEL, model_dir, splits_dir, weaker, "run-weak", {})
    assert outcome["version"] == 3 and outcome["promoted"] is False
    assert (outcome["alias_before"], outcome["alias_after"]) == (2, 2)
    assert "production moved to v2 after evaluation" in outcome["reason"]
    assert "below production v2 AUC 0.9000" in outcome["reason"]
    registry = ModelRegistry(registry_root)
    assert registry.version(MODEL, "production")["version"] == 2
    assert [m["version"] for m in registry.versions(MODEL)] == [1, 2, 3]
    # Moved, but the candidate still passes against the new production: it is promoted.
    still_good = make_evaluation_dir(tmp_path / "e-good", 0.95, champion={"version": 1, "auc": 0.70})
    outcome = register_model(registry_root, MODEL, model_dir, splits_dir, still_good, "run-good", {})
    assert (outcome["version"], outcome["promoted"], outcome["alias_before"], outcome["alias_after"]) == (4, True, 2, 4)


RACE_CHILD = """
import json
from searchtune.steps.register import register_model
outcome = register_model(*sys.argv[3:9], {"child": sys.argv[8]})
print(json.dumps(outcome))
"""


def test_two_pipeline_runs_registering_at_once(registry_root, tmp_path):
    """Both versions are kept; exactly one becomes production; the other says why not.

    The gate requires beating production by 0.01 (max_auc_drop = -0.01) and both candidates
    have the same AUC, so whichever moves the alias second no longer passes.
    """
    model_dir = make_model_dir(tmp_path / "model")
    splits_dir = make_splits_dir(tmp_path / "splits", train_rows=200)
    register_model(registry_root, MODEL, model_dir, splits_dir, make_evaluation_dir(tmp_path / "e1", 0.70), "seed", {})
    champion = {"version": 1, "auc": 0.70}
    evaluations = [make_evaluation_dir(tmp_path / f"e-{run}", 0.80, champion=champion, max_auc_drop=-0.01)
                   for run in ("p1", "p2")]
    go = tmp_path / "go"
    prelude = "import os, sys, time\nopen(sys.argv[1], 'w').close()\nwhile not os.path.exists(sys.argv[2]): time.sleep(0.001)\n"
    children = [subprocess.Popen(
        [sys.executable, "-c", prelude + textwrap.dedent(RACE_CHILD), str(tmp_path / f"ready-{run}"), str(go),
         registry_root, MODEL, model_dir, splits_dir, evaluation, run],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for run, evaluation in zip(("p1", "p2"), evaluations, strict=True)]
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
    evaluation_dir = make_evaluation_dir(tmp_path / "eval", 0.8)
    root = str(tmp_path / "registry")

    @dsl.pipeline(name="register-only")
    def register_only() -> int:
        model = dsl.importer(artifact_uri=model_dir, artifact_class=dsl.Model)
        splits = dsl.importer(artifact_uri=splits_dir, artifact_class=dsl.Dataset)
        evaluation = dsl.importer(artifact_uri=evaluation_dir, artifact_class=dsl.Artifact)
        task = register(model=model.output, splits=splits.output, evaluation=evaluation.output,
                        registry_root=root, model_name=MODEL, parameters_json='{"epochs": 2}', run_id="kfp-run")
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
    assert lineage["parameters"] == {"epochs": 2}
