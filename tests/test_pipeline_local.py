"""The real DAG under kfp.local: both gate branches, a champion, and bad input.

Slow (each run starts five component subprocesses and trains a small model), so the
data and the training budget are small; what is checked is the wiring and the registry.
The CLI's own run (its output, an untrained adapter refused) is in tests/test_cli_output.py.
"""

import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from searchtune import records
from searchtune.cli import run as pipeline_cli
from searchtune.data import sample_data
from searchtune.orchestration import local_run
from searchtune.params import RunParameters
from searchtune.registry import ModelRegistry

pytestmark = pytest.mark.slow

SMALL_TRAINING = {"epochs": 1, "max_train_rows": 256, "text_columns": "product_title,brand"}
# 256 training rows do not beat the untuned base beyond noise: these runs test the wiring,
# so the gate asks only for the floor (test_an_untrained_adapter_is_not_blessed asks for more).
WIRING_GATE = {"require_beat_base": False}


def tree_digest(root: Path) -> dict:
    """Every file under root with its sha256: 'unchanged' means byte for byte."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("pipeline")


class WebhookHandler(http.server.BaseHTTPRequestHandler):
    """A webhook on 127.0.0.1 that keeps the text of every post (tests/test_notify.py tests the step itself)."""

    def do_POST(self):  # noqa: N802 - http.server's name
        self.server.texts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"])
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WebhookHandler)
    server.texts, server.url = [], f"http://127.0.0.1:{server.server_address[1]}/hook"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def run(workdir: Path, data: str, **values) -> local_run.LocalRun:
    arguments = {"data": data, "registry_root": str(workdir / "registry"), **SMALL_TRAINING, **WIRING_GATE, **values}
    return local_run.run_local(RunParameters(**arguments), str(workdir / "runs"))


def test_blessed_run_registers_then_next_run_meets_the_champion_then_a_failed_gate_changes_nothing(workdir, webhook):
    registry = ModelRegistry(str(workdir / "registry"))
    # A data path with a quote and a space: it must run through registration and into the lineage.
    odd_folder = workdir / 'logs "2026" q\'s'
    odd_folder.mkdir()
    data = str(odd_folder / "judgements.parquet")
    shutil.copyfile(sample_data.default_sample_path(), data)  # the bundled sample: ~150 test queries

    # Warm start as a schedule sets it: the first run has no production model to continue, so it starts from the base.
    first = run(workdir, data, min_auc=0.5, init_from="production", notify_webhook=webhook.url)
    evaluation_dir = str(first.step_output("evaluate", "evaluation"))
    assert first.step_output("evaluate", "drift_report").read_text().lstrip().lower().startswith("<!doctype html")
    assert first.step_output("evaluate", "summary").read_text().startswith("# searchtune evaluation")
    assert first.step_output("evaluate", "report").read_text().startswith("<!doctype html>")
    assert len(pd.read_parquet(first.step_output("evaluate", "predictions"))) == records.Evaluation.read(evaluation_dir).test_rows
    blessing = records.Blessing.read(evaluation_dir)
    assert blessing.blessed and blessing.production_version is None, blessing.reason
    assert records.Evaluation.read(evaluation_dir).drift.status == "no_reference"  # a first model: no alarm
    # What people open sits in the run's folder, with extensions; the full log too.
    for name in ("report.html", "summary.md", "drift_report.html", "predictions.parquet", "model_card.md", "pipeline.log"):
        assert first.published(name) is not None, name
    assert records.ModelRecord.read(str(first.published("model"))).epochs
    assert records.ModelRecord.read(str(first.published("model"))).warm_start is None
    production = registry.production("searchtune-relevance")
    assert production["version"] == 1
    version_dir = workdir / "registry" / "searchtune-relevance" / "versions" / "1"
    for name in ("adapter/adapter_model.safetensors", "tokenizer/tokenizer.json", "searchtune_model.json",
                 "evaluation.json", "blessing.json", "lineage.json", "reference_sample.parquet", "MANIFEST.json",
                 "model_card.md", "report.html"):
        assert (version_dir / name).exists(), name
    lineage = records.Lineage.read(str(version_dir))
    run_record = records.RunRecord.read(str(first.step_output("preflight", "run")))
    assert lineage.run_id == run_record.run_id == Path(first.run_dir).name
    assert lineage.data["sources"] == [data] and lineage.parameters["data"] == data
    assert lineage.parameters == RunParameters(**{**lineage.parameters}).model_dump()  # every parameter, as the run used it
    assert lineage.parameters["min_auc"] == 0.5 and lineage.parameters["epochs"] == 1
    assert Path(first.root).parent == workdir / "runs" and Path(first.run_dir).parent == Path(first.root)
    assert "version 1, now production" in pipeline_cli.describe_run(first)
    # The exit handler posted the blessed branch's verdict, naming the version and its report in the registry.
    (posted,) = webhook.texts
    assert posted.startswith(f"searchtune run {lineage.run_id} (searchtune-relevance): BLESSED\ngate: gauc "), posted
    assert "\nregistered: v1, now production\n" in posted and f"\nreason: {blessing.reason}\n" in posted
    assert posted.endswith(f"\nreport: {version_dir / 'report.html'}")
    # The webhook URL is a credential: kept out of run.json and the lineage (which keeps the default, '').
    assert lineage.parameters["notify_webhook"] == "" and webhook.url not in json.dumps(lineage.parameters)

    # Second run: the registry has a production model, so it is scored on the same rows and is
    # the drift reference; a generous max_auc_drop lets the candidate through.
    # It also continues training production v1 (init_from, resolved by preflight), recorded in the version's lineage.
    second = run(workdir, data, min_auc=0.5, max_auc_drop=0.5, init_from="production")
    started_from = records.WarmStart(model_name="searchtune-relevance", version=1, uri=registry.version_uri("searchtune-relevance", 1))
    assert records.RunRecord.read(str(second.step_output("preflight", "run"))).warm_start == started_from
    assert records.ModelRecord.read(str(second.step_output("finetune", "model"))).warm_start == started_from
    evaluation = records.Evaluation.read(str(second.step_output("evaluate", "evaluation")))
    assert evaluation.production_version == 1 and "production" in evaluation.blessing.statistics.models
    champion = records.ChampionRecord.read(str(second.step_output("champion", "champion")))
    assert champion.found and champion.version == 1 and champion.reference_rows > 0
    assert evaluation.drift.reference == "production v1's training data"
    assert evaluation.drift.current == "this run's training data"
    assert evaluation.drift.status == "stable" and evaluation.drift.drifted_columns == []  # the same data again
    assert evaluation.drift.scored_rows > 0 and "production_score" in evaluation.drift.per_column  # prediction drift too
    assert evaluation.blessing.production_version == 1 and evaluation.blessing.blessed, evaluation.blessing.reason
    assert registry.production("searchtune-relevance")["version"] == 2
    assert records.Lineage.read(str(version_dir.parent / "2")).warm_start == started_from

    # Third run: an unreachable floor. The register task is skipped; versions and aliases are
    # untouched and the refusal is in the candidates log.
    versions = workdir / "registry" / "searchtune-relevance" / "versions"
    before = tree_digest(versions), registry.alias("searchtune-relevance")
    third = run(workdir, data, min_auc=0.999, notify_webhook=webhook.url)
    third_blessing = records.Blessing.read(str(third.step_output("evaluate", "evaluation")))
    assert not third_blessing.blessed and third_blessing.decided_by == "min_auc"
    assert not Path(third.run_dir, "register").exists() and Path(third.run_dir, "record-refusal").exists()
    assert (tree_digest(versions), registry.alias("searchtune-relevance")) == before
    logged = registry.candidates("searchtune-relevance")
    assert [c["blessed"] for c in logged] == [False, True, True]  # newest first
    assert logged[0]["run_id"] == Path(third.run_dir).name and "min_auc 0.999" in logged[0]["reason"]
    assert "NOT BLESSED" in pipeline_cli.describe_run(third)
    refused_report = third.step_output("evaluate", "evaluation") / "report.html"
    assert webhook.texts[-1].startswith(f"searchtune run {logged[0]['run_id']} (searchtune-relevance): NOT BLESSED\n")
    assert "\nregistered: none\n" in webhook.texts[-1] and webhook.texts[-1].endswith(f"\nreport: {refused_report}")
    assert refused_report.read_text().startswith("<!doctype html>") and len(webhook.texts) == 2  # the second run posts nothing


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
    # Two of the runs also check that --log-level reaches the steps: WARNING silences their INFO
    # records (in the run's log as well), DEBUG shows everything, kfp.local's executor dumps included.
    levels = dict(zip(bad_inputs(tmp_path, sample_frame), ("WARNING", "DEBUG", None, None), strict=True))
    for path, message in bad_inputs(tmp_path, sample_frame).items():
        level = ["--log-level", levels[path]] if levels[path] else []
        result = subprocess.run(
            [sys.executable, "-m", "searchtune.cli", *level, "run", "--data", str(path), "--registry", str(registry_root),
             "--output-dir", str(workdir / "bad-runs"), "--text-columns", "product_title,brand", "--epochs", "1"],
            capture_output=True, text=True, timeout=600,
        )
        last_line = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2, result.stderr[-3000:]
        assert last_line.startswith("searchtune: error: step ingest failed: "), last_line
        assert re.search(message, last_line), last_line
        assert "Traceback" not in result.stderr
        assert tree_digest(registry_root) == before, f"registry changed after {path.name}"
        log_text = max((workdir / "bad-runs").glob("*/pipeline.log"), key=os.path.getmtime).read_text()
        printed = result.stdout + result.stderr
        assert ("Got executor_input" in printed) == (levels[path] == "DEBUG") and "Got executor_input" in log_text
        assert (" INFO searchtune." in log_text) == (levels[path] != "WARNING"), levels[path]
        assert ("preflight       started" in printed) == (levels[path] is None)


def test_default_pipeline_with_data_and_registry_on_gcs(gcs_bucket, sample_file, tmp_path):
    """The same DAG with gs:// data and registry (a real gcp-storage-emulator server)."""
    from searchtune.io import storage

    data_uri = f"{gcs_bucket}/search-logs/2026-11-22/judgements.parquet"
    storage.upload(sample_file, data_uri)
    registry_root = f"{gcs_bucket}/registry"
    result = local_run.run_local(RunParameters(data=f"{gcs_bucket}/search-logs/*/*.parquet", registry_root=registry_root,
                                               min_auc=0.5, min_test_queries=5, **SMALL_TRAINING, **WIRING_GATE),
                                 str(tmp_path / "runs"))
    registry = ModelRegistry(registry_root)
    production = registry.production("searchtune-relevance")
    assert production["version"] == 1
    pulled = tmp_path / "pulled"
    registry.fetch("searchtune-relevance", "production", str(pulled))
    lineage = records.Lineage.read(str(pulled))
    assert lineage.data["sources"] == [data_uri]  # the exact gs:// object the version was trained on
    assert lineage.data["files"][0]["uri"] == data_uri and lineage.data["files"][0]["version"]  # with its generation
    assert "version 1, now production" in pipeline_cli.describe_run(result)
