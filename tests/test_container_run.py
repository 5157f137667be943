"""The default pipeline in the built CPU image (``searchtune run --runner docker``), next to the subprocess run.

Needs a Docker engine and the CPU image: ``.ci/containers`` builds it and runs this file with
``SEARCHTUNE_CONTAINER_TESTS=1`` after the test suite; without that variable it is skipped.
What it shows: the containerized run reaches the subprocess run's verdict and metrics with
the same seed; a second containerized run finds the first one's production version in the
mounted local registry; outputs belong to the invoking user; and the image's own user runs
``searchtune`` commands from its working directory.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from searchtune import records
from searchtune.orchestration import images

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("SEARCHTUNE_CONTAINER_TESTS") != "1",
                       reason="needs a Docker engine and the built CPU image: .ci/containers runs it"),
]

# A tiny budget: the comparison is of the runners, not of the recipe. Such a candidate need not beat
# the untuned base, so the gate registers it anyway: the second containerized run needs a production version.
BUDGET = ["--max-train-rows", "300", "--epochs", "1", "--seed", "13", "--no-require-beat-base"]
IMAGE = os.environ.get("SEARCHTUNE_TEST_IMAGE", images.CPU_IMAGE)


def searchtune_run(folder: Path, *extra: str) -> tuple[int, str]:
    command = [sys.executable, "-m", "searchtune.cli", "run", *BUDGET, "--registry", str(folder / "registry"),
               "--output-dir", str(folder / "runs"), *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return result.returncode, result.stdout + result.stderr


def latest_evaluation(folder: Path) -> records.Evaluation:
    runs = sorted((folder / "runs").iterdir())
    found = sorted(runs[-1].glob("*/evaluate/evaluation"))
    return records.Evaluation.read(str(found[0]))


def latest_champion(folder: Path) -> records.ChampionRecord:
    runs = sorted((folder / "runs").iterdir())
    return records.ChampionRecord.read(str(sorted(runs[-1].glob("*/champion/champion"))[0]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    subprocess_folder = tmp_path_factory.mktemp("subprocess-run")
    docker_folder = tmp_path_factory.mktemp("docker-run")
    code, output = searchtune_run(subprocess_folder)
    assert code in (0, 3), output
    code, output = searchtune_run(docker_folder, "--runner", "docker", "--image-prefix", IMAGE.rsplit("/", 1)[0],
                                  "--image-tag", IMAGE.rsplit(":", 1)[1])
    assert code in (0, 3), output
    return subprocess_folder, docker_folder


def test_the_containerized_run_reaches_the_subprocess_runs_verdict_and_metrics(runs):
    in_process, in_containers = (latest_evaluation(folder) for folder in runs)
    assert in_containers.blessing.blessed == in_process.blessing.blessed
    assert in_containers.blessing.decided_by == in_process.blessing.decided_by
    assert (in_containers.test_rows, in_containers.test_queries) == (in_process.test_rows, in_process.test_queries)
    for model, values in in_process.blessing.statistics.models.items():
        for metric, estimate in values.items():
            other = in_containers.blessing.statistics.models[model][metric]
            for part in ("value", "low", "high"):
                expected = getattr(estimate, part)
                assert getattr(other, part) == (None if expected is None else pytest.approx(expected, abs=1e-6)), \
                    (model, metric, part)


def test_what_the_containers_wrote_belongs_to_the_invoking_user(runs):
    _, docker_folder = runs
    owners = {path.stat().st_uid for path in (docker_folder / "runs").rglob("*") if not path.is_symlink()}
    assert owners == {os.getuid()}


def test_a_second_containerized_run_finds_the_production_version_in_the_mounted_registry(runs):
    _, docker_folder = runs
    assert (docker_folder / "registry").is_dir(), "the first containerized run registered nothing"
    first = latest_evaluation(docker_folder)
    code, output = searchtune_run(docker_folder, "--runner", "docker", "--image-prefix", IMAGE.rsplit("/", 1)[0],
                                  "--image-tag", IMAGE.rsplit(":", 1)[1], "--no-require-beat-base")
    assert code in (0, 3), output
    champion = latest_champion(docker_folder)
    assert champion.found and champion.error is None and champion.version is not None, output
    assert latest_evaluation(docker_folder).production_version == champion.version
    assert "champion        done" in output and f"production v{champion.version}" in output
    assert first.production_version is None


def docker(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def test_the_images_user_runs_searchtune_from_its_working_directory():
    """No volumes, the image's uid 1000: the default run and the registry commands work where it starts."""
    script = ("set -e; searchtune run --max-train-rows 100 --epochs 1 > run.txt 2>&1 || [ $? -eq 3 ]; "
              "tail -3 run.txt; searchtune models list; id -u; pwd")
    result = docker("run", "--rm", IMAGE, "sh", "-c", script)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-2:] == ["1000", "/home/searchtune"]
    assert "Traceback" not in result.stdout + result.stderr and "PermissionError" not in result.stdout + result.stderr
