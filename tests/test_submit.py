"""``searchtune submit`` against a local HTTP server that answers like the KFP v2beta1 API.

The server is real (stdlib http.server on a free loopback port) and records every
request, so the tests check what kfp.Client actually sent: the uploaded YAML, the run's
parameters, the cron, max_concurrency and no_catchup.
"""

import email.parser
import email.policy
import hashlib
import http.server
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
import yaml
from kfp import compiler

from searchtune.errors import SearchtuneError
from searchtune.orchestration import kfp_client
from searchtune.orchestration.cluster import ClusterSettings
from searchtune.orchestration.cron import validate_cron
from searchtune.orchestration.submission_plan import plan


def _small_pipeline():
    """The five-step test pipeline of test_cluster.py (pytest's importlib mode has no sys.path entry)."""
    spec = importlib.util.spec_from_file_location("searchtune_test_cluster", Path(__file__).with_name("test_cluster.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.small_pipeline


small_pipeline = _small_pipeline()


class FakeKfpApi(http.server.BaseHTTPRequestHandler):
    """Answers the v2beta1 endpoints kfp.Client uses; state lives on the server object."""

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def _reply(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict:
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = {
            "method": self.command,
            "path": url.path,
            "query": dict(urllib.parse.parse_qsl(url.query)),
            "content_type": self.headers.get("Content-Type", ""),
            "body": body,
        }
        self.server.requests.append(request)
        return request

    def do_GET(self):
        request = self._record()
        state, path = self.server.state, request["path"]
        if path == "/apis/v2beta1/healthz":
            return self._reply({"multi_user": False})
        if path == "/apis/v2beta1/pipelines":
            wanted = json.loads(request["query"].get("filter", "{}")).get("predicates", [{}])[0].get("stringValue")
            found = [p for p in state["pipelines"] if p["display_name"] == wanted]
            return self._reply({"pipelines": found, "total_size": len(found)} if found else {})
        if path.startswith("/apis/v2beta1/pipelines/") and path.endswith("/versions"):
            pipeline_id = path.split("/")[4]
            versions = [v for v in state["versions"] if v["pipeline_id"] == pipeline_id][::-1]
            return self._reply({"pipeline_versions": versions[:1], "total_size": len(versions)})
        if path == "/apis/v2beta1/experiments":
            wanted = json.loads(request["query"].get("filter", "{}")).get("predicates", [{}])[0].get("stringValue")
            found = [e for e in state["experiments"] if e["display_name"] == wanted]
            return self._reply({"experiments": found, "total_size": len(found)} if found else {})
        self._reply({"error": f"no route {path}", "code": 5}, 404)

    def do_POST(self):
        request = self._record()
        state, path = self.server.state, request["path"]
        if path == "/apis/v2beta1/pipelines/upload":
            pipeline = {"pipeline_id": f"p{len(state['pipelines']) + 1}", "display_name": request["query"]["name"]}
            state["pipelines"].append(pipeline)
            state["versions"].append({"pipeline_id": pipeline["pipeline_id"], "display_name": pipeline["display_name"],
                                      "pipeline_version_id": f"v{len(state['versions']) + 1}"})
            return self._reply(pipeline)
        if path == "/apis/v2beta1/pipelines/upload_version":
            version = {"pipeline_id": request["query"]["pipelineid"], "display_name": request["query"]["name"],
                       "pipeline_version_id": f"v{len(state['versions']) + 1}"}
            state["versions"].append(version)
            return self._reply(version)
        if path == "/apis/v2beta1/experiments":
            experiment = dict(json.loads(request["body"]), experiment_id=f"e{len(state['experiments']) + 1}")
            state["experiments"].append(experiment)
            return self._reply(experiment)
        if path == "/apis/v2beta1/runs":
            return self._reply(dict(json.loads(request["body"]), run_id="r1", state="PENDING"))
        if path == "/apis/v2beta1/recurringruns":
            return self._reply(dict(json.loads(request["body"]), recurring_run_id="rr1", status="ENABLED"))
        self._reply({"error": f"no route {path}", "code": 5}, 404)


@pytest.fixture
def kfp_api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeKfpApi)
    server.requests = []
    server.state = {"pipelines": [], "versions": [], "experiments": []}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = tmp_path_factory.mktemp("package") / "pipeline.yaml"
    compiler.Compiler().compile(small_pipeline(ClusterSettings(enable_caching=False, image_tag="t1")), str(path))
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def uploaded_yaml(request: dict) -> bytes:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + request["content_type"].encode() + b"\r\n\r\n" + request["body"]
    )
    (part,) = [p for p in message.iter_parts() if p.get_param("name", header="content-disposition") == "uploadfile"]
    return part.get_payload(decode=True)


def calls(server, method: str, path: str) -> list[dict]:
    return [r for r in server.requests if r["method"] == method and r["path"] == path]


def test_run_uploads_the_pipeline_and_starts_a_run_with_typed_parameters(kfp_api, package):
    submission = plan(package, kfp_api.url, params=["rows=7"], experiment="relevance", run_name="nightly")
    ids = kfp_client.send(submission)

    assert ids == {"pipeline_id": "p1", "pipeline_version_id": "v1", "experiment_id": "e1", "run_id": "r1"}
    (upload,) = calls(kfp_api, "POST", "/apis/v2beta1/pipelines/upload")
    assert upload["query"]["name"] == "searchtune-test"
    with open(package, "rb") as handle:
        assert uploaded_yaml(upload) == handle.read()
    (experiment,) = calls(kfp_api, "POST", "/apis/v2beta1/experiments")
    assert json.loads(experiment["body"])["display_name"] == "relevance"
    (run,) = calls(kfp_api, "POST", "/apis/v2beta1/runs")
    body = json.loads(run["body"])
    assert body["display_name"] == "nightly"
    assert body["experiment_id"] == "e1"
    assert body["pipeline_version_reference"] == {"pipeline_id": "p1", "pipeline_version_id": "v1"}
    assert body["runtime_config"]["parameters"] == {"rows": 7}
    assert not calls(kfp_api, "POST", "/apis/v2beta1/recurringruns")


def test_schedule_creates_a_recurring_run_on_a_new_version(kfp_api, package):
    kfp_api.state["pipelines"].append({"pipeline_id": "p9", "display_name": "searchtune-test"})
    submission = plan(package, kfp_api.url, params=["rows=3"], schedule="0 0 3 * * 1")
    ids = kfp_client.send(submission)

    assert ids["recurring_run_id"] == "rr1" and ids["pipeline_id"] == "p9"
    assert not calls(kfp_api, "POST", "/apis/v2beta1/pipelines/upload"), "the pipeline exists: upload a version"
    (version,) = calls(kfp_api, "POST", "/apis/v2beta1/pipelines/upload_version")
    assert version["query"]["pipelineid"] == "p9"
    assert version["query"]["name"] == submission.version_name
    uploaded = uploaded_yaml(version)
    assert hashlib.sha256(uploaded).hexdigest() == submission.package_sha256
    spec, platform = yaml.safe_load_all(uploaded)  # the Kubernetes settings travel with the spec
    assert "tolerations" not in str(platform) and "/dev/shm" in str(platform)
    tasks = spec["root"]["dag"]["tasks"]
    steps = {name: task for name, task in tasks.items() if not name.startswith("condition")}
    assert set(steps) == {"ingest", "tokenize", "finetune", "evaluate"}
    assert not any(task["cachingOptions"].get("enableCache") for task in steps.values()), "caching off"
    (recurring,) = calls(kfp_api, "POST", "/apis/v2beta1/recurringruns")
    body = json.loads(recurring["body"])
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert body["max_concurrency"] == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["runtime_config"]["parameters"] == {"rows": 3}
    assert body["pipeline_version_reference"] == {"pipeline_id": "p9", "pipeline_version_id": "v1"}
    assert not calls(kfp_api, "POST", "/apis/v2beta1/runs")


def test_dry_run_plan_names_everything_and_sends_nothing(kfp_api, package):
    submission = plan(package, kfp_api.url, params=["rows=2"], schedule="@daily")
    described = submission.to_dict()
    assert described["recurring_run"]["cron_expression"] == "@daily"
    assert described["recurring_run"]["max_concurrency"] == 1
    assert described["recurring_run"]["no_catchup"] is True
    assert described["recurring_run"]["parameters"] == {"rows": 2}
    assert described["recurring_run"]["enable_caching"] is False, "the package was compiled with caching off"
    assert described["pipeline"]["images"] == [
        "ghcr.io/searchtune/searchtune-cpu:t1",
        "ghcr.io/searchtune/searchtune-gpu:t1",
    ]
    json.dumps(described)  # printable as JSON
    assert kfp_api.requests == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (["colour=red"], "--param colour: the pipeline has no input of that name; its inputs are rows"),
        (["rows=many"], "--param rows='many': the pipeline wants a Integer"),
        (["rows"], "--param 'rows': expected KEY=VALUE"),
        (["rows=1", "rows=2"], "--param rows is given twice"),
    ],
)
def test_bad_parameters_are_refused_before_sending(kfp_api, package, params, message):
    with pytest.raises(SearchtuneError) as caught:
        plan(package, kfp_api.url, params=params)
    assert str(caught.value) == message
    assert kfp_api.requests == []


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("0 3 * * *", "has 5 fields, but KFP's cron has 6 with seconds first"),
        ("0 0 3 * *  * 2026", "has 7 fields"),
        ("0 60 3 * * *", "minute field '60': '60' is not in 0-59"),
        ("0 0 3 ? * MON-FRI/0", "step '0' must be a positive number"),
        ("0 0 3 * 13 *", "month field '13'"),
        ("0 0 ? * * *", "'?' only fits day fields"),
        ("@fortnightly", "unknown descriptor"),
    ],
)
def test_bad_cron_is_explained(cron, message):
    with pytest.raises(SearchtuneError, match=message.replace("?", r"\?")):
        validate_cron(cron)


def test_five_field_cron_message_shows_the_corrected_expression():
    with pytest.raises(SearchtuneError) as caught:
        validate_cron("30 2 * * 1-5")
    assert str(caught.value).endswith("use '0 30 2 * * 1-5'")


@pytest.mark.parametrize("cron", ["0 0 3 * * *", "0 */15 * * * ?", "0 0 3 ? * MON-FRI", "0 0 0 1,15 jan-jun *",
                                  "@weekly", "@every 6h30m"])
def test_good_cron_passes(cron):
    assert validate_cron(cron) == cron


def test_unreachable_host_is_one_line(package):
    submission = plan(package, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SearchtuneError) as caught:
        kfp_client.send(submission)
    assert str(caught.value).startswith(f"cannot reach the KFP API at {submission.host}:")
    assert "\n" not in str(caught.value)


def test_api_error_names_the_step(kfp_api, package):
    kfp_api.state["pipelines"].append({"pipeline_id": "p1", "display_name": "searchtune-test"})
    kfp_api.state["pipelines"].append({"pipeline_id": "p2", "display_name": "searchtune-test"})
    with pytest.raises(SearchtuneError, match="2 pipelines are named 'searchtune-test'"):
        kfp_client.send(plan(package, kfp_api.url))


def test_host_must_be_a_url(package):
    with pytest.raises(SearchtuneError, match="must be an http:// or https:// URL"):
        plan(package, "kfp.example.com")


def cli(*argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "searchtune.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_cli_errors_are_one_line_without_traceback():
    five = cli("submit", "--host", "http://127.0.0.1:9", "--schedule", "0 3 * * *")
    assert five.returncode == 2
    assert five.stderr.strip().splitlines() == [
        "searchtune: error: --schedule '0 3 * * *' has 5 fields, but KFP's cron has 6 with seconds first "
        "(second minute hour day-of-month month day-of-week): use '0 0 3 * * *'"
    ]
    bad = cli("submit", "--host", f"http://127.0.0.1:{free_port()}", "--registry-root", "gs://b/r", "--min-auc", "nan")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "searchtune: error: invalid parameters: --min-auc nan: must be a finite number"]
    no_registry = cli("submit", "--host", f"http://127.0.0.1:{free_port()}")
    assert no_registry.returncode == 2 and "--registry-root is required" in no_registry.stderr
    no_data = cli("submit", "--host", f"http://127.0.0.1:{free_port()}", "--registry-root", "gs://b/r")
    assert no_data.returncode == 2 and "--data is required" in no_data.stderr
    down = cli("submit", "--host", f"http://127.0.0.1:{free_port()}", "--registry-root", "gs://b/r", "--data", "gs://b/logs",
               "--param", "min_auc=0.7")
    assert down.returncode == 2, down.stderr
    assert "Traceback" not in down.stderr
    assert down.stderr.strip().splitlines()[-1].startswith("searchtune: error: cannot reach the KFP API at")


def test_parameters_come_from_flags_and_the_environment_and_are_checked(monkeypatch):
    from searchtune.cli import main as cli_main
    from searchtune.cli import submit as submit_cli

    parser = cli_main.build_parser()
    monkeypatch.setenv("SEARCHTUNE_PARAM_MIN_AUC", "0.7")
    monkeypatch.setenv("SEARCHTUNE_PARAM_DATA", "gs://b/logs/*.parquet")
    monkeypatch.setenv("SEARCHTUNE_PARAM_EPOCHS", "")  # blank: not set
    args = parser.parse_args(["submit", "--host", "http://x", "--params-from-env", "--registry", "gs://b/r", "--min-auc", "0.8"])
    assert submit_cli.run_arguments(args) == {"min_auc": 0.8, "data": "gs://b/logs/*.parquet", "registry_root": "gs://b/r"}
    monkeypatch.setenv("SEARCHTUNE_PARAM_MIN_AUCC", "0.7")
    with pytest.raises(SearchtuneError, match=r"\$SEARCHTUNE_PARAM_MIN_AUCC: the pipeline has no parameter 'min_aucc'"):
        submit_cli.run_arguments(args)
    monkeypatch.delenv("SEARCHTUNE_PARAM_MIN_AUCC")
    monkeypatch.setenv("SEARCHTUNE_PARAM_EPOCHS", "three")
    with pytest.raises(SearchtuneError, match="--epochs 'three'"):
        submit_cli.run_arguments(args)
