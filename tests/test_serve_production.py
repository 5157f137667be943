"""`make serve`: the registry's production version over real HTTP on 127.0.0.1, answering search
and rerank with the catalog's own product ids; without a production model, one line on what to do."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from searchtune.errors import SearchtuneError
from searchtune.registry import ModelRegistry
from searchtune.serving.local import free_port
from searchtune.steps import index as index_step

ROOT = Path(__file__).resolve().parents[1]
MODEL = "searchtune-relevance"
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def make_serve(registry: str, port: int, **popen) -> list[str]:
    """`make serve` for ``registry`` with this interpreter (the venv is not rebuilt: -o marks it up to date)."""
    return ["make", "--no-print-directory", "-C", str(ROOT), "-o", ".venv/bin/searchtune", "serve",
            f"SEARCHTUNE={sys.executable} -m searchtune.cli", f"REGISTRY={registry}", f"SERVE_PORT={port}"]


def post(url: str, payload) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
    raise AssertionError(f"not ready in {timeout} s: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def production_registry(trained_model_dir, splits_dir, tmp_path_factory) -> str:
    """A local registry whose production v1 is the trained model with the index step's default index."""
    staging = tmp_path_factory.mktemp("version") / "model"
    shutil.copytree(trained_model_dir, staging)
    index_step.build_index(trained_model_dir, splits_dir, str(staging / "index"), threads=1)
    root = str(tmp_path_factory.mktemp("registry"))
    registry = ModelRegistry(root)
    registry.register_version(MODEL, str(staging), {"run_id": "serve-test"})
    registry.move_alias(MODEL, 1, expected=None, actor="test", reason="make serve test")
    return root


def test_make_serve_answers_search_and_rerank_with_the_catalogs_product_uid(production_registry, sample_frame, tmp_path):
    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        process = subprocess.Popen(make_serve(production_registry, port), stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        wait_ready(url, process, log)
        uids = set(sample_frame["product_uid"].astype(str))
        status, body = post(f"{url}/v1/models/{MODEL}-search:predict", {"instances": [{"query": "cordless drill", "k": 5}]})
        assert status == 200, body
        (found,) = body["predictions"]
        assert len(found["product_ids"]) == 5 and set(found["product_ids"]) <= uids  # the data's own ids, not hashes
        titles = dict(zip(sample_frame["product_uid"].astype(str), sample_frame["product_title"], strict=True))
        assert any("drill" in titles[product_id].lower() for product_id in found["product_ids"])
        best, second = found["product_ids"][:2]
        status, body = post(f"{url}/v1/models/{MODEL}:predict",
                            {"instances": [{"query": "cordless drill", "candidates": [{"product_id": second},
                                                                                      {"product_id": best}]}]})
        assert status == 200, body
        scores = body["predictions"][0]["scores"]
        assert scores[1] >= scores[0]  # rerank by id agrees with the search's order
        assert abs(scores[1] - found["scores"][0]) < 1e-5
        with urllib.request.urlopen(f"{url}/v1/models/{MODEL}", timeout=10) as response:
            assert json.loads(response.read())["ready"] is True
        served = log.read_text()
        assert f"{production_registry}/{MODEL}/versions/1" in served  # served in place, no copy
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_make_serve_without_a_production_model_says_what_to_do_in_one_line(tmp_path):
    result = subprocess.run(make_serve(str(tmp_path / "empty-registry"), free_port()), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    # make's own lines ("make: *** ...", or "make[1]: ..." when the tests run under `make test`) are not ours.
    ours = [line for line in result.stderr.splitlines() if not re.match(r"make(\[\d+\])?: ", line)]
    assert len(ours) == 1 and "Traceback" not in result.stderr + result.stdout, result.stderr
    (line,) = ours
    assert line.startswith(f"searchtune: error: no production model '{MODEL}' in {tmp_path / 'empty-registry'} yet: ")
    assert "`make run` registers one" in line and "`searchtune run --no-require-beat-base`" in line


@pytest.mark.parametrize("backend", ["local", "gcs"])
def test_a_production_ref_is_served_in_place_locally_and_pulled_once_from_gcs(backend, tmp_path, request):
    from searchtune.serving.cli import registered_model_dir

    root = str(tmp_path / "registry") if backend == "local" else request.getfixturevalue("gcs_bucket") + "/registry"
    files = tmp_path / "files"
    (files / "index").mkdir(parents=True)
    (files / "searchtune_model.json").write_text("{}")
    (files / "index" / "ids.parquet").write_bytes(b"\x02" * 100)
    registry = ModelRegistry(root)
    with pytest.raises(SearchtuneError, match=r"^no production model 'searchtune-relevance' in .* yet: `make run` registers"):
        registered_model_dir("@production", root, str(tmp_path / "pulled"))
    registry.register_version(MODEL, str(files), {"run_id": "serve-ref-test"})
    registry.move_alias(MODEL, 1, expected=None, actor="test", reason="serve ref test")
    folder = registered_model_dir("@production", root, str(tmp_path / "pulled"))
    if backend == "local":
        assert folder == registry.version_uri(MODEL, 1) and not (tmp_path / "pulled").exists()
    else:
        assert folder == str(tmp_path / "pulled" / MODEL / "v1")
        stamp = (Path(folder) / "index" / "ids.parquet").stat().st_mtime_ns
        assert registered_model_dir(f"{root}/{MODEL}@1", root, str(tmp_path / "pulled")) == folder
        assert (Path(folder) / "index" / "ids.parquet").stat().st_mtime_ns == stamp  # not pulled again
    assert (Path(folder) / "index" / "ids.parquet").read_bytes() == b"\x02" * 100
    assert (Path(folder) / "MANIFEST.json").is_file()
