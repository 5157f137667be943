"""The real DAG under kfp.local: both gate branches, a champion, and bad input.

Slow (each run starts five component subprocesses and trains a small model), so the
data and the training budget are small; what is checked is the wiring and the registry.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from searchtune.cli import run as pipeline_cli
from searchtune.registry import ModelRegistry

pytestmark = pytest.mark.slow

SMALL_TRAINING = {"epochs": 1, "max_train_rows": 256, "text_columns": "product_title,brand"}


def tree_digest(root: Path) -> dict:
    """Every file under root with its sha256: 'unchanged' means byte for byte."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("pipeline")


def run(workdir: Path, data: str, **params) -> dict:
    arguments = {"data": data, "registry_root": str(workdir / "registry"), **SMALL_TRAINING, **params}
    return pipeline_cli.run_local(arguments, str(workdir / "runs"))


def test_blessed_run_registers_then_next_run_meets_the_champion_then_a_failed_gate_changes_nothing(workdir, sample_file):
    registry = ModelRegistry(str(workdir / "registry"))

    first = run(workdir, sample_file, min_auc=0.5)
    run_dir = Path(first["run_dir"])
    assert (run_dir / "evaluate" / "drift_report").read_text().lstrip().lower().startswith("<!doctype html")
    assert (run_dir / "evaluate" / "summary").read_text().startswith("# searchtune evaluation")
    blessing = json.loads((run_dir / "evaluate" / "evaluation" / "blessing.json").read_text())
    assert blessing["blessed"] and blessing["champion"] is None
    production = registry.production("searchtune-relevance")
    assert production["version"] == 1
    version_dir = workdir / "registry" / "searchtune-relevance" / "versions" / "1"
    for name in ("adapter/adapter_model.safetensors", "tokenizer/tokenizer.json", "searchtune_model.json",
                 "evaluation.json", "blessing.json", "lineage.json", "reference_sample.parquet", "MANIFEST.json"):
        assert (version_dir / name).exists(), name
    lineage = json.loads((version_dir / "lineage.json").read_text())
    assert lineage["run_id"] == run_dir.name and lineage["data"]["sources"] == [sample_file]
    assert float(lineage["parameters"]["min_auc"]) == 0.5  # resolved by KFP at run time
    assert "searchtune-relevance" in pipeline_cli.describe_run(first) or "version 1" in pipeline_cli.describe_run(first)

    # Second run: the registry has a production model, so it is scored on the same rows and is
    # the drift reference; a generous max_auc_drop lets the candidate through.
    second = run(workdir, sample_file, min_auc=0.5, max_auc_drop=0.5)
    evaluation = json.loads((Path(second["run_dir"]) / "evaluate" / "evaluation" / "evaluation.json").read_text())
    assert evaluation["champion"]["version"] == 1
    assert evaluation["drift"]["reference"] == "production v1's training data"
    assert evaluation["drift"]["current"] == "this run's train split"
    assert evaluation["drift"]["drifted_columns"] == []  # the same data again: nothing moved
    assert evaluation["blessing"]["champion"]["version"] == 1 and evaluation["blessing"]["blessed"]
    assert registry.production("searchtune-relevance")["version"] == 2

    # Third run: an unreachable floor. The register task is skipped and the registry is untouched.
    before = tree_digest(workdir / "registry")
    third = run(workdir, sample_file, min_auc=0.999)
    third_dir = Path(third["run_dir"])
    assert not json.loads((third_dir / "evaluate" / "evaluation" / "blessing.json").read_text())["blessed"]
    assert not (third_dir / "register").exists()
    assert tree_digest(workdir / "registry") == before
    assert "NOT BLESSED" in pipeline_cli.describe_run(third)


def bad_inputs(tmp: Path, good: pd.DataFrame) -> dict:
    missing = tmp / "missing_column.csv"
    good.drop(columns=["brand"]).to_csv(missing, index=False)
    empty = tmp / "empty.csv"
    empty.write_text("")
    garbage = tmp / "garbage.parquet"
    garbage.write_bytes(os.urandom(5000))
    half_bad = good.copy().astype({"relevance": object})
    half_bad.loc[::2, "relevance"] = "n/a"
    half = tmp / "half_bad.jsonl"
    half_bad.to_json(half, orient="records", lines=True)
    return {
        missing: r"missing column\(s\) 'brand'; columns found: ",
        empty: r"empty.csv: the file is empty",
        garbage: r"garbage.parquet: cannot be read as parquet",
        half: r"rows \(50.0%\) were rejected, above max_reject_ratio 5.0%",
    }


def test_bad_input_fails_with_a_clear_message_and_leaves_the_registry_unchanged(workdir, sample_frame, tmp_path):
    registry_root = workdir / "bad-input-registry"
    # A registry with one version in it, made by the registry's own code: a real starting state.
    model_dir = tmp_path / "fake_model"
    (model_dir / "adapter").mkdir(parents=True)
    (model_dir / "adapter" / "weights.bin").write_bytes(b"\x01" * 1000)
    ModelRegistry(str(registry_root)).register_version("searchtune-relevance", str(model_dir), {"run_id": "seed"})
    before = tree_digest(registry_root)
    assert before
    for path, message in bad_inputs(tmp_path, sample_frame).items():
        result = subprocess.run(
            [sys.executable, "-m", "searchtune.cli", "run", "--data", str(path), "--registry", str(registry_root),
             "--output-dir", str(workdir / "bad-runs"), "--text-columns", "product_title,brand", "--epochs", "1"],
            capture_output=True, text=True, timeout=600,
        )
        last_line = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2, result.stderr[-3000:]
        assert last_line.startswith("searchtune: error: step ingest failed: "), last_line
        assert pytest.importorskip("re").search(message, last_line), last_line
        assert "Traceback" not in result.stderr
        assert tree_digest(registry_root) == before, f"registry changed after {path.name}"


def test_default_pipeline_with_data_and_registry_on_gcs(gcs_bucket, sample_file, tmp_path):
    """The same DAG with gs:// data and registry (a real gcp-storage-emulator server)."""
    from searchtune.io import storage

    data_uri = f"{gcs_bucket}/search-logs/2026-11-22/judgements.parquet"
    storage.upload(sample_file, data_uri)
    registry_root = f"{gcs_bucket}/registry"
    result = pipeline_cli.run_local({"data": f"{gcs_bucket}/search-logs/*/*.parquet", "registry_root": registry_root,
                                     "min_auc": 0.5, **SMALL_TRAINING}, str(tmp_path / "runs"))
    registry = ModelRegistry(registry_root)
    production = registry.production("searchtune-relevance")
    assert production["version"] == 1
    pulled = tmp_path / "pulled"
    registry.fetch("searchtune-relevance", "production", str(pulled))
    lineage = json.loads((pulled / "lineage.json").read_text())
    assert lineage["data"]["sources"] == [data_uri]  # the exact gs:// object the version was trained on
    assert "version 1, now production" in pipeline_cli.describe_run(result)
