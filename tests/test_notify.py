"""The notify step against a real HTTP receiver on 127.0.0.1: the step alone, then the exit
handler of real kfp.local runs, one refused (its webhook down) and one failed.

kfp.local (2.17) runs ``dsl.ExitHandler`` exit tasks after the body, also when a body task
failed, and hands them ``PipelineTaskFinalStatus`` (state ``SUCCEEDED``/``FAILED``).
"""

import http.server
import json
import logging
import os
import threading
from pathlib import Path

import pytest

from searchtune.errors import SearchtuneError
from searchtune.orchestration import local_run
from searchtune.params import RunParameters
from searchtune.registry import ModelRegistry
from searchtune.steps import notify

MODEL = "searchtune-relevance"


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook: keeps every POST body (parsed JSON) and answers with ``status``."""

    def __init__(self, status: int = 200):
        self.posts: list[dict] = []
        self.status = status
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/hooks/T000/B000/secret-token"


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts.append({"content_type": self.headers["Content-Type"], **json.loads(body)})
        self.send_response(self.server.status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # a proxy from the environment must not take local posts
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def refused_record(run_id: str) -> dict:
    return {"run_id": run_id, "blessed": False, "decided_by": "beats_base", "gate_metric": "gauc", "value": 0.889,
            "low": 0.854, "high": 0.92, "reason": "does not beat untuned base", "production_version": None,
            "report": "gs://bucket/root/run-7/evaluate/evaluation/report.html"}


def test_a_refused_run_posts_its_verdict_gate_and_report(receiver, tmp_path):
    registry = ModelRegistry(str(tmp_path / "registry"))
    registry.record_candidate(MODEL, refused_record("run-7"))
    registry.record_candidate(MODEL, {**refused_record("run-8"), "reason": "another run"})

    verdict = notify.notify(receiver.url, registry.root, MODEL, "run-7", "SUCCEEDED")

    assert (verdict.verdict, verdict.gate, verdict.registered_version) == ("NOT BLESSED", "gauc 0.889 [0.854, 0.920]", 0)
    (post,) = receiver.posts
    assert post["content_type"] == "application/json"
    assert post["text"] == ("searchtune run run-7 (searchtune-relevance): NOT BLESSED\n"
                            "gate: gauc 0.889 [0.854, 0.920]\n"
                            "registered: none\n"
                            "reason: does not beat untuned base\n"
                            "report: gs://bucket/root/run-7/evaluate/evaluation/report.html")


def test_a_blessed_run_names_its_version(receiver, tmp_path):
    registry = ModelRegistry(str(tmp_path / "registry"))
    registry.record_candidate(MODEL, {**refused_record("run-9"), "blessed": True, "version": 4, "promoted": True,
                                      "reason": "beats base", "report": "/registry/v4/report.html"})
    verdict = notify.notify(receiver.url, registry.root, MODEL, "run-9", "SUCCEEDED")
    assert verdict.verdict == "BLESSED" and verdict.registered_version == 4
    assert "registered: v4, now production\n" in receiver.posts[0]["text"]


def test_a_failed_run_posts_the_failing_steps_message(receiver, tmp_path, monkeypatch):
    errors = tmp_path / "errors"
    errors.write_text("step ingest failed: garbage.parquet: cannot be read as parquet\n")
    monkeypatch.setenv("SEARCHTUNE_ERROR_FILE", str(errors))
    reason = notify.failure_reason("Task exit-handler-1 failed.")
    verdict = notify.notify(receiver.url, str(tmp_path / "registry"), MODEL, "run-3", "FAILED", reason)
    assert verdict.verdict == "FAILED" and verdict.gate == ""
    assert receiver.posts[0]["text"] == ("searchtune run run-3 (searchtune-relevance): FAILED\n"
                                         "reason: step ingest failed: garbage.parquet: cannot be read as parquet\n"
                                         "report: none")
    monkeypatch.delenv("SEARCHTUNE_ERROR_FILE")
    assert notify.failure_reason("Task exit-handler-1 failed.") == "Task exit-handler-1 failed."  # KFP's words on a cluster


def test_a_run_without_a_record_or_with_an_unreadable_registry_is_unknown(receiver, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a registry")
    for registry_root in (str(tmp_path / "empty-registry"), str(a_file / "registry")):
        verdict = notify.notify("", registry_root, MODEL, "run-1", "SUCCEEDED")
        assert verdict.verdict == "UNKNOWN" and verdict.reason.startswith("the run succeeded, but "), verdict.reason
    assert receiver.posts == []  # no URL, no post


def test_a_webhook_that_fails_is_logged_without_its_secret_and_never_raises(receiver, tmp_path, caplog):
    receiver.status = 503
    with caplog.at_level(logging.INFO, logger="searchtune.steps.notify"):
        assert not notify.post(receiver.url, "hello", retry_seconds=0.01)
    assert [p["text"] for p in receiver.posts] == ["hello"] * notify.POST_ATTEMPTS  # 5xx: retried
    port = receiver.server_address[1]
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.getMessage() == (f"notify: could not post the verdict to http://127.0.0.1:{port}/... after 3 attempt(s): "
                                  "HTTP 503 Service Unavailable; the run's outcome is unchanged")
    assert "secret-token" not in caplog.text

    receiver.posts.clear()
    receiver.status = 404  # the hook refuses this message: asking again will not help
    assert not notify.post(receiver.url, "hello", retry_seconds=0.01) and len(receiver.posts) == 1
    receiver.server_close()  # nothing listens any more
    assert not notify.post(receiver.url, "hello", attempts=1)
    assert "after 1 attempt(s): " in caplog.records[-1].getMessage()


def test_the_webhook_must_be_an_http_url():
    with pytest.raises(SearchtuneError, match="--notify-webhook 'hooks.slack.com/x': must be empty or an http"):
        from searchtune import params

        params.parse(RunParameters, {"notify_webhook": "hooks.slack.com/x"}, flag_style=True)


# --- the exit handler of real kfp.local runs ---

SMALL_RUN = {"epochs": 1, "max_train_rows": 256, "text_columns": "product_title,brand", "min_test_queries": 5}


@pytest.mark.slow
def test_a_refused_run_with_its_webhook_down_still_succeeds_and_outputs_its_verdict(receiver, sample_file, tmp_path, capfd):
    """The real pipeline under kfp.local, called directly so that its pipeline outputs come back."""
    from kfp import local
    from searchtune.pipelines.retraining_pipeline import build_pipeline

    from searchtune.orchestration.cluster import ClusterSettings

    receiver.status = 503
    registry_root = str(tmp_path / "registry")
    parameters = RunParameters(data=sample_file, registry_root=registry_root, min_auc=0.999, notify_webhook=receiver.url,
                               **SMALL_RUN)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    outputs = build_pipeline(ClusterSettings(retries=0, cpu_retries=0))(**parameters.model_dump()).outputs

    (run_dir,) = (tmp_path / "root").iterdir()
    run_id = run_dir.name
    assert not (run_dir / "register").exists() and (run_dir / "record-refusal").exists()  # the else branch ran
    report = run_dir / "evaluate" / "evaluation" / "report.html"
    assert report.read_text().startswith("<!doctype html>")
    (record,) = ModelRegistry(registry_root).candidates(MODEL)
    gate = f"gauc {record['value']:.3f} [{record['low']:.3f}, {record['high']:.3f}]"
    assert outputs["verdict"] == "NOT BLESSED" and outputs["registered_version"] == 0
    assert outputs["gate"] == gate and "min_auc 0.999" in outputs["reason"] and outputs["report"] == str(report)
    assert outputs["verdict_metrics"].metadata == {"gauc": record["value"], "gauc_low": record["low"],
                                                   "gauc_high": record["high"], "blessed": 0.0, "registered_version": 0.0}
    # The webhook answered 503 to each of the three attempts; the run succeeded all the same, and said why.
    assert len(receiver.posts) == notify.POST_ATTEMPTS
    assert receiver.posts[0]["text"] == (f"searchtune run {run_id} (searchtune-relevance): NOT BLESSED\ngate: {gate}\n"
                                         f"registered: none\nreason: {record['reason']}\nreport: {report}")
    assert "could not post the verdict to http://127.0.0.1:" in capfd.readouterr().out


@pytest.mark.slow
def test_a_failed_run_posts_why_it_failed_and_still_fails(receiver, tmp_path):
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(os.urandom(5000))
    parameters = RunParameters(data=str(garbage), registry_root=str(tmp_path / "registry"), notify_webhook=receiver.url,
                               **SMALL_RUN)
    with pytest.raises(SearchtuneError, match="step ingest failed: .*garbage.parquet: cannot be read as parquet"):
        local_run.run_local(parameters, str(tmp_path / "runs"))
    (post,) = receiver.posts
    (root,) = (tmp_path / "runs").iterdir()
    (run_dir,) = [d for d in root.iterdir() if d.is_dir()]
    lines = post["text"].splitlines()
    assert lines[0] == f"searchtune run {run_dir.name} (searchtune-relevance): FAILED"
    assert lines[1].startswith("reason: step ingest failed: ") and "garbage.parquet: cannot be read as parquet" in lines[1]
    assert lines[2:] == ["report: none"] and not Path(run_dir, "finetune").exists()
