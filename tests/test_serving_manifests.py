"""The InferenceService serves one registry version, is probed and sized, and the documented
one-command rollout (a JSON patch of STORAGE_URI) is valid against the rendered manifest."""

import contextlib
import copy
import importlib.util
import io
import json
import re
from pathlib import Path

import pytest

from searchtune.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "serving.md"


def manifests_helpers():
    """``render``/``validate``/``expand`` of tests/test_manifests.py (pytest's importlib mode: load by path)."""
    spec = importlib.util.spec_from_file_location("manifest_checks", ROOT / "tests" / "test_manifests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered():
    helpers = manifests_helpers()
    docs = {doc["kind"]: doc for doc in helpers.render("overlays/example")}
    return helpers, docs["InferenceService"], docs["ConfigMap"]["data"]


def predictor_container(service: dict) -> dict:
    (container,) = service["spec"]["predictor"]["containers"]
    return container


def rollout_patch() -> list[dict]:
    """The JSON patch of the rollout command documented in docs/serving.md."""
    found = re.search(r"kubectl patch inferenceservice \S+ .*?--type json -p \\\n\s*'(\[.*?\])'", DOC.read_text(), re.S)
    assert found, "docs/serving.md lost the rollout command"
    return json.loads(found.group(1))


def apply_patch(document: dict, patch: list[dict]) -> dict:
    """RFC 6902 'replace' on a copy, failing like the API server when the path does not exist."""
    patched = copy.deepcopy(document)
    for operation in patch:
        assert operation["op"] == "replace"
        *parents, last = operation["path"].strip("/").split("/")
        node = patched
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = int(last) if isinstance(node, list) else last
        node[key]  # noqa: B018 - 'replace' needs an existing value
        node[key] = operation["value"]
    return patched


def test_the_predictor_serves_the_registry_version_named_by_storage_uri(rendered):
    helpers, service, env = rendered
    helpers.validate(service)
    container = predictor_container(service)
    first = container["env"][0]
    assert first["name"] == "STORAGE_URI"
    assert re.fullmatch(rf"gs://[^/]+/registry/{env['MODEL_NAME']}/versions/\d+", first["value"])
    assert first["value"].startswith(env["REGISTRY_ROOT"] + "/"), "the overlay serves a version of its own registry"
    assert "initContainers" not in service["spec"]["predictor"], "KServe's storage initializer does the copy"
    with contextlib.redirect_stderr(io.StringIO()):
        args = cli.build_parser().parse_args([*container["command"][1:], *helpers.expand(container["args"], env)])
    assert args.command == "serve" and args.model_dir == "/mnt/models" and args.model_name == env["MODEL_NAME"]
    assert args.port == container["ports"][0]["containerPort"] == 8080 and args.threads == 1


def test_probes_resources_and_rolling_update_keep_traffic_on_ready_pods(rendered):
    _, service, _ = rendered
    predictor = service["spec"]["predictor"]
    container = predictor_container(service)
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["livenessProbe"]["httpGet"]["path"] == container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert predictor["deploymentStrategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert predictor["minReplicas"] >= 2
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


def test_the_documented_rollout_command_patches_storage_uri_and_stays_valid(rendered):
    helpers, service, _ = rendered
    patch = rollout_patch()
    new_uri = "gs://acme-ml-search/registry/searchtune-relevance/versions/7"
    patch[0]["value"] = new_uri
    patched = apply_patch(service, patch)
    helpers.validate(patched)
    assert predictor_container(patched)["env"][0] == {"name": "STORAGE_URI", "value": new_uri}
    comment = (ROOT / "manifests" / "components" / "serving" / "inferenceservice.yaml").read_text()
    assert patch[0]["path"] in comment, "the manifest's comment and docs/serving.md name the same patch"
