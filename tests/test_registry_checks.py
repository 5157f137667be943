"""Registry checks on a local folder and a real GCS emulator: check_writable, verify, version_health."""

import ctypes
import os
import stat
import subprocess
import sys

import pytest

from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry import ModelRegistry

sys.path.insert(0, os.path.dirname(__file__))  # tests/ is no package (pytest --import-mode=importlib)
from registry_helpers import MODEL, register, snapshot  # noqa: E402

# --------------------------------------------------------------------------- check_writable


def test_check_writable_leaves_nothing_behind(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    registry.check_writable()  # a registry that does not exist yet: usable, and still holds nothing
    assert storage.list_prefix(registry_root) == []
    register(registry, tmp_path, "a")
    before = snapshot(registry_root)
    registry.check_writable(MODEL)
    assert snapshot(registry_root) == before
    if not storage.is_gcs(registry_root):  # at most an empty _probes folder, which no reader lists
        assert sorted(os.listdir(registry_root)) == sorted([MODEL, "_probes"])
        assert os.listdir(os.path.join(registry_root, "_probes")) == []


def test_a_leftover_probe_is_invisible_to_readers(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    register(registry, tmp_path, "a")
    storage.write_bytes(storage.join(registry_root, "_probes", "crashed-probe.json"), b"{}")
    assert registry.models() == [MODEL] and [m["version"] for m in registry.versions(MODEL)] == [1]
    assert registry.verify(MODEL).ok


def one_line_error(action) -> str:
    with pytest.raises(SearchtuneError) as error:
        action()
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_forbidden_and_missing_buckets_fail_with_one_line(gcs_emulator):
    # The test server answers `denied-*` buckets with GCS's 403 (see tests/gcs_emulator.py).
    message = one_line_error(ModelRegistry("gs://denied-registry/models").check_writable)
    assert message.startswith("registry gs://denied-registry/models is not usable: cannot list objects in it: "
                              "gs://denied-registry/models/_probes: permission denied (403)"), message
    assert "roles/storage.objectUser on bucket 'denied-registry'" in message
    message = one_line_error(ModelRegistry("gs://no-such-bucket-probe/models").check_writable)
    assert "bucket 'no-such-bucket-probe' does not exist" in message
    assert message.endswith("create bucket 'no-such-bucket-probe' or correct --registry"), message


def test_a_file_where_the_registry_folder_should_be(tmp_path):
    (tmp_path / "registry").write_text("not a folder")
    message = one_line_error(ModelRegistry(str(tmp_path / "registry")).check_writable)
    assert message.startswith(f"registry {tmp_path / 'registry'} is not usable: cannot create objects in it: "), message
    assert "is a file" in message or "is not a folder" in message, message
    assert (tmp_path / "registry").read_text() == "not a folder"


CHECK_CHILD = """
import sys
from searchtune.errors import SearchtuneError
from searchtune.registry import ModelRegistry
try:
    ModelRegistry(sys.argv[1]).check_writable()
except SearchtuneError as error:
    print(error)
    sys.exit(2)
print("writable")
"""


def _drop_permission_override() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set.

    Root ignores permission bits only because of these two capabilities; without them a
    root process is refused by a folder without write permission like any other user.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def check_in_child(root: str) -> subprocess.CompletedProcess:
    """check_writable in a child process that folder permissions apply to, also when run as root."""
    as_user = {"preexec_fn": _drop_permission_override} if os.geteuid() == 0 else {}
    return subprocess.run([sys.executable, "-c", CHECK_CHILD, root], capture_output=True, text=True, timeout=120,
                          **as_user)


def test_read_only_local_registry_fails_before_anything_is_written(tmp_path):
    writable = tmp_path / "writable"
    writable.mkdir()
    result = check_in_child(str(writable))
    assert (result.returncode, result.stdout.strip()) == (0, "writable"), result.stderr  # the child itself works
    assert [p for p in writable.rglob("*") if p.is_file()] == []  # at most an empty _probes folder

    root = str(tmp_path / "registry")
    registry = ModelRegistry(root)
    register(registry, tmp_path, "a")
    before = snapshot(root)
    read_only = stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    folders = [directory for directory, _dirs, _files in os.walk(root)]
    for folder in folders:
        os.chmod(folder, read_only)
    try:
        result = check_in_child(root)
    finally:
        for folder in folders:
            os.chmod(folder, 0o755)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert lines[0].startswith(f"registry {root} is not usable: cannot create objects in it: {root}/_probes: "
                               "permission denied; choose a folder"), lines[0]
    assert snapshot(root) == before


# --------------------------------------------------------------------------- verify


def test_verify_finds_deleted_corrupted_unlisted_files_broken_manifest_and_dangling_alias(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    for tag in "abcd":
        register(registry, tmp_path, tag)
    registry.promote(MODEL, 1, actor="t", reason="r")
    registry.promote(MODEL, 2, actor="t", reason="r")
    report = registry.verify(MODEL)
    assert report.ok and report.problems() == []
    assert [c.version for c in report.versions] == [1, 2, 3, 4] and all(c.files == 5 for c in report.versions)
    assert [(c.alias, c.version) for c in report.aliases] == [("production", 2)]
    assert all(h["problems"] == [] for h in registry.version_health(MODEL))

    v = {n: registry.version_uri(MODEL, n) for n in (1, 2, 3, 4)}
    storage.delete(storage.join(v[1], "tokenizer", "vocab.txt"))
    weights = storage.join(v[2], "adapter", "adapter_model.safetensors")
    storage.write_bytes(weights, b"X" * len(storage.read_bytes(weights)))  # same size, other bytes
    storage.write_bytes(storage.join(v[3], "MANIFEST.json"), b'{"version": 3, "files": [')
    storage.write_bytes(storage.join(v[4], "extra.bin"), b"slipped in")
    storage.write_bytes(storage.join(registry_root, MODEL, "aliases", "staging.json"),
                        b'{"version": 9, "seq": 1, "previous_version": null}')

    problems = registry.verify(MODEL).problems()
    assert problems[0] == "v1: tokenizer/vocab.txt: missing"
    assert problems[1].startswith("v2: adapter/adapter_model.safetensors: 500 bytes sha256 ")
    assert "manifest says 500 bytes sha256" in problems[1]
    assert problems[2].startswith("v3: MANIFEST.json: not valid JSON")
    assert problems[3] == "v4: extra.bin: stored but not in the manifest"
    assert problems[4] == "@staging: points at v9, which has no manifest (no such version)"
    assert len(problems) == 5, problems

    # The cheap check of `models list` sees what a listing shows: a missing file, not changed bytes.
    health = {h["version"]: h["problems"] for h in registry.version_health(MODEL)}
    assert health[1] == ["tokenizer/vocab.txt: missing"] and health[2] == [] and health[4] == []
    assert health[3][0].startswith(f"{storage.join(v[3], 'MANIFEST.json')}: not valid JSON")

    # One ref: just that version, or an alias with its target and history.
    assert registry.verify(MODEL, "v2").problems() == [problems[1]]
    only_production = registry.verify(MODEL, "production")
    assert [c.version for c in only_production.versions] == [2] and [c.alias for c in only_production.aliases] == [
        "production"]
    assert registry.verify(MODEL, "staging").problems() == [problems[4]]
    with pytest.raises(SearchtuneError, match="no alias 'canary'"):
        registry.verify(MODEL, "canary")


def test_verify_reports_history_holes_but_only_notes_a_history_record_not_yet_written(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    for tag in "abc":
        register(registry, tmp_path, tag)
    for version in (1, 2, 3):
        registry.promote(MODEL, version, actor="t", reason="r")
    history = storage.join(registry_root, MODEL, "aliases", "history", "production")
    storage.delete(storage.join(history, "00000003.json"))  # a mover died before writing it: self-repairing
    report = registry.verify(MODEL)
    assert report.ok and report.aliases[0].notes == ["history record #3 not written yet; the next move writes it"]
    storage.delete(storage.join(history, "00000001.json"))  # someone deleted history: a hole
    assert registry.verify(MODEL).problems() == ["@production: alias history lacks record(s) #1"]
