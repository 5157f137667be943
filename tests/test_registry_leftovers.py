"""``models verify --repair`` removes what killed writers left, and nothing else; ``models prune`` as a command."""

import datetime as dt
import json
import os
import subprocess
import sys
import time

from searchtune.io import local, storage
from searchtune.registry import ModelRegistry

sys.path.insert(0, os.path.dirname(__file__))  # tests/ is no package (pytest --import-mode=importlib)
from registry_helpers import MODEL, register, snapshot  # noqa: E402

HOUR_AGO = time.time() - 3600


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "searchtune.cli", "models", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def probe(registry: ModelRegistry, name: str, seconds_ago: float) -> str:
    """A probe object as check_writable writes it, as if its run was killed ``seconds_ago``."""
    at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds_ago)
    uri = storage.join(registry.root, "_probes", name)
    storage.write_bytes(uri, json.dumps({"probe": "searchtune registry check_writable", "at": at.isoformat()}).encode())
    return uri


def everything(root: str) -> set[str]:
    """Every file below a local root, temporary ones included (listings skip those)."""
    return {os.path.relpath(os.path.join(d, f), root) for d, _dirs, files in os.walk(root) for f in files}


def test_verify_repair_removes_old_temporary_files_and_probes_only(tmp_path):
    root = str(tmp_path / "registry")
    registry = ModelRegistry(root)
    register(registry, tmp_path, "a")
    registry.promote(MODEL, 1, actor="setup", reason="first")
    version = registry.version_uri(MODEL, 1)
    # What writers killed at different moments leave: the temporary name of a file being copied
    # (part written), one killed right after creating it (empty), and one of a write going on now.
    partial = local.temp_path(os.path.join(version, "adapter", "adapter_model.safetensors"))
    empty = local.temp_path(os.path.join(root, MODEL, "aliases", "production.json"))
    live = local.temp_path(os.path.join(root, MODEL, "candidates", "20261124T055557.123456Z-run.json"))
    for path, data in ((partial, b"x" * 300), (empty, b""), (live, b"{")):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
    os.utime(partial, (HOUR_AGO, HOUR_AGO))
    os.utime(empty, (HOUR_AGO, HOUR_AGO))
    old_probe, new_probe = probe(registry, "host-1-dead.json", 3600), probe(registry, "host-2-live.json", 1)
    # Not leftovers of a killed write: stays, whatever its age.
    storage.write_bytes(storage.join(root, "README.txt"), b"notes of the team")
    storage.write_bytes(storage.join(registry.version_uri(MODEL, 7), "CLAIM"), b"{}")  # abandoned registration
    before = snapshot(root)

    result = cli("verify", "--registry", root)  # without --repair nothing is removed
    assert result.returncode == 0, result.stdout + result.stderr
    assert {partial, empty, live} <= {os.path.join(root, p) for p in everything(root)}

    result = cli("verify", "--registry", root, "--repair")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"removed {partial} (300 bytes, left by a killed write)" in lines
    assert f"removed {empty} (0 bytes, left by a killed write)" in lines
    assert any(line.startswith(f"removed {old_probe} (") for line in lines)
    assert any(line.startswith(f"kept    {live} (changed ") for line in lines)
    assert any(line.startswith(f"kept    {new_probe} (changed ") for line in lines)
    assert lines[-1] == "verified: no problems found"
    left = {os.path.join(root, p) for p in everything(root)}
    assert not {partial, empty, old_probe} & left and {live, new_probe} <= left
    old_probe_key = os.path.relpath(old_probe, root)
    assert snapshot(root) == {k: b for k, b in before.items() if k != old_probe_key}


def test_verify_repair_on_gcs_removes_temporary_objects_copied_up(gcs_bucket, tmp_path):
    root = f"{gcs_bucket}/registry"
    registry = ModelRegistry(root)
    register(registry, tmp_path, "a")
    copied = storage.join(registry.version_uri(MODEL, 1), ".vocab.txt.4242.0badcafe" + local.TMP_SUFFIX)
    storage.write_bytes(copied, b"")  # e.g. `gsutil rsync` of a local registry with a killed write in it
    old_probe = probe(registry, "pod-1-dead.json", 3600)
    before = snapshot(root)
    result = cli("verify", f"{root}/{MODEL}", "--repair")  # one model: its folder, not the probes
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"removed {copied} (0 bytes, left by a killed write)"
    assert storage.exists(old_probe)
    result = cli("verify", "--registry", root, "--repair")
    assert result.returncode == 0 and result.stdout.splitlines()[0].startswith(f"removed {old_probe} (")
    gone = {storage.relative(copied, root), storage.relative(old_probe, root)}
    assert snapshot(root) == {k: b for k, b in before.items() if k not in gone}


def test_prune_command_dry_run_then_prune(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    for tag in "abcde":
        register(registry, tmp_path, tag)
    registry.promote(MODEL, 2, actor="setup", reason="first")
    registry.promote(MODEL, 3, actor="setup", reason="second")
    ref = f"{registry_root}/{MODEL}"
    before = snapshot(registry_root)

    result = cli("prune", ref, "--keep", "1", "--min-age", "0", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (f"{MODEL}  ({registry.root}, 5 version(s); keeping the newest 1 and every version still "
                        "needed)")
    assert [line.split()[:2] for line in lines[1:-1]] == [["v1", "would"], ["v2", "keep"], ["v3", "keep"],
                                                          ["v4", "would"]]
    assert " ".join(lines[2].split()[2:]) == "rollback target of @production"
    assert lines[-1].startswith("dry run: would delete 2 version(s), ") and lines[-1].endswith("; nothing changed")
    assert snapshot(registry_root) == before

    result = cli("prune", "--registry", registry_root, "--keep", "0")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "searchtune: error: --keep must be at least 1 (the newest version is always kept), got 0"]
    assert snapshot(registry_root) == before

    result = cli("prune", "--registry", registry_root, "--keep", "1", "--min-age", "0")
    assert result.returncode == 0, result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines()[1:-1]] == [
        ["v1", "deleted"], ["v2", "keep"], ["v3", "keep"], ["v4", "deleted"]]
    assert result.stdout.splitlines()[-1].startswith("deleted 2 version(s), ")
    assert [m["version"] for m in registry.versions(MODEL)] == [2, 3, 5]
    assert registry.verify(MODEL).ok
