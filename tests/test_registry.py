"""ModelRegistry on a local folder and on a real GCS emulator: versions, aliases, crashes, races."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry import AliasConflict, ModelRegistry

sys.path.insert(0, os.path.dirname(__file__))  # tests/ is no package (pytest --import-mode=importlib)
from registry_helpers import MODEL, make_version_files, register, run_children, snapshot  # noqa: E402

# --------------------------------------------------------------------------- versions


def test_register_list_show_fetch(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    assert registry.versions(MODEL) == [] and registry.models() == []
    first = register(registry, tmp_path, "a", auc=0.81)
    second = register(registry, tmp_path, "b", auc=0.83)
    assert [m["version"] for m in registry.versions(MODEL)] == [1, 2]
    assert registry.models() == [MODEL]
    assert first["run_id"] == "run-a" and first["created_by"] == "test" and first["created_at"]
    assert {f["path"] for f in first["files"]} == {
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "tokenizer/vocab.txt",
        "searchtune_model.json", "notes.json"}
    for ref in (2, "2", "v2", "latest"):
        assert registry.version(MODEL, ref)["version"] == 2
    assert registry.production(MODEL) is None
    registry.promote(MODEL, 1, actor="alice", reason="first")
    assert registry.version(MODEL, "production")["version"] == 1
    assert registry.production(MODEL)["auc"] == pytest.approx(0.81)
    with pytest.raises(SearchtuneError, match=r"no version 7; available: v1, v2; aliases: production"):
        registry.version(MODEL, 7)
    with pytest.raises(SearchtuneError, match="no alias 'staging'"):
        registry.version(MODEL, "staging")
    dest = tmp_path / "fetched"
    registry.fetch(MODEL, "latest", str(dest))
    assert json.loads((dest / "searchtune_model.json").read_text())["tag"] == "b"
    assert json.loads((dest / "MANIFEST.json").read_text())["version"] == second["version"]
    with pytest.raises(SearchtuneError, match="not an empty folder"):
        registry.fetch(MODEL, 1, str(dest))


def test_versions_are_immutable(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    register(registry, tmp_path, "a")
    before = snapshot(registry_root)
    version_uri = registry.version_uri(MODEL, 1)
    with pytest.raises(storage.PreconditionFailed):
        storage.create_bytes(storage.join(version_uri, "MANIFEST.json"), b'{"version": 1, "files": []}')
    with pytest.raises(storage.PreconditionFailed):
        storage.create_bytes(storage.join(version_uri, "searchtune_model.json"), b"{}")
    assert snapshot(registry_root) == before
    register(registry, tmp_path, "b")  # the next registration gets a new number, v1 untouched
    after = snapshot(registry_root)
    assert {k: v for k, v in after.items() if k.startswith(f"{MODEL}/versions/1/")} == {
        k: v for k, v in before.items() if k.startswith(f"{MODEL}/versions/1/")}


def test_checksum_mismatch_is_detected_on_fetch(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    register(registry, tmp_path, "a")
    tampered = storage.join(registry.version_uri(MODEL, 1), "adapter", "adapter_model.safetensors")
    storage.write_bytes(tampered, b"not the weights that were registered")
    with pytest.raises(SearchtuneError) as error:
        registry.fetch(MODEL, 1, str(tmp_path / "out"))
    assert str(error.value).startswith(f"{tampered}: checksum mismatch")
    assert not (tmp_path / "out").exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".fetch-")] == []


def test_failed_registration_leaves_registry_unchanged(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    register(registry, tmp_path, "a")
    before = snapshot(registry_root)
    folder = make_version_files(tmp_path / "files-bad", "bad")
    # Metadata that cannot be written as JSON fails at the very end, after every file was
    # uploaded: the most there is to clean up.
    with pytest.raises(TypeError):
        registry.register_version(MODEL, folder, {"run_id": "bad", "not_json": {1, 2}})
    assert snapshot(registry_root) == before
    assert register(registry, tmp_path, "b")["version"] == 2


def test_register_version_rejects_reserved_names_and_bad_model_names(tmp_path):
    registry = ModelRegistry(str(tmp_path / "registry"))
    folder = make_version_files(tmp_path / "files", "a")
    with open(os.path.join(folder, "MANIFEST.json"), "w") as handle:
        handle.write("{}")
    with pytest.raises(SearchtuneError, match="reserves"):
        registry.register_version(MODEL, folder, {})
    with pytest.raises(SearchtuneError, match="invalid model name"):
        registry.versions("../escape")


# --------------------------------------------------------------------------- aliases


def test_promote_rollback_and_history(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    for tag in "abc":
        register(registry, tmp_path, tag)
    with pytest.raises(SearchtuneError, match="no production alias"):
        registry.rollback(MODEL, actor="ops", reason="nothing yet")
    registry.move_alias(MODEL, 1, expected=None, actor="pipeline", reason="first", run_id="r1")
    with pytest.raises(AliasConflict) as conflict:
        registry.move_alias(MODEL, 2, expected=None, actor="pipeline", reason="stale view")
    assert conflict.value.current["version"] == 1
    registry.promote(MODEL, "v2", actor="alice", reason="better")
    registry.promote(MODEL, 3, actor="alice", reason="best")
    with pytest.raises(SearchtuneError, match="already points at v3"):
        registry.promote(MODEL, 3, actor="alice", reason="again")
    back = registry.rollback(MODEL, actor="bob", reason="v3 misbehaves")
    assert (back["version"], back["previous_version"], back["moved_by"]) == (2, 3, "bob")
    assert registry.version(MODEL, "production")["version"] == 2
    history = registry.alias_history(MODEL)
    assert [(h["seq"], h["previous_version"], h["version"]) for h in history] == [
        (1, None, 1), (2, 1, 2), (3, 2, 3), (4, 3, 2)]
    assert history[0]["run_id"] == "r1" and history[3]["reason"] == "v3 misbehaves"
    with pytest.raises(SearchtuneError, match="no version 9"):
        registry.promote(MODEL, 9, actor="alice", reason="typo")


def test_history_is_repaired_when_a_mover_died_between_alias_and_history(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    register(registry, tmp_path, "a")
    register(registry, tmp_path, "b")
    registry.promote(MODEL, 1, actor="a", reason="r")
    registry.promote(MODEL, 2, actor="a", reason="r")
    # What a SIGKILL between the alias write and the history write leaves: no history #2.
    storage.delete(storage.join(registry_root, MODEL, "aliases", "history", "production", "00000002.json"))
    assert [h["seq"] for h in registry.alias_history(MODEL)] == [1, 2]  # read from the alias itself
    registry.rollback(MODEL, actor="a", reason="r")  # the next mover writes the missing record
    assert storage.exists(storage.join(registry_root, MODEL, "aliases", "history", "production", "00000002.json"))
    assert [(h["seq"], h["version"]) for h in registry.alias_history(MODEL)] == [(1, 1), (2, 2), (3, 1)]


CAS_CHILD = """
import json
from searchtune.errors import SearchtuneError
from searchtune.registry import AliasConflict, ModelRegistry
root, name, moves = sys.argv[3], sys.argv[4], int(sys.argv[5])
registry = ModelRegistry(root)
done = conflicts = 0
while done < moves:
    current = registry.alias("relevance")["version"]
    target = 1 + current % 3  # any version other than the current one
    try:
        registry.move_alias("relevance", target, expected=current, actor=name, reason="race")
        done += 1
    except AliasConflict:
        conflicts += 1
print(json.dumps({"done": done, "conflicts": conflicts}))
"""


def test_concurrent_alias_moves_lose_no_update(registry_root, tmp_path):
    """Two processes moving the alias as fast as they can: every successful move is in the
    history exactly once, each one starting from where the previous one left the alias."""
    registry = ModelRegistry(registry_root)
    for tag in "abc":
        register(registry, tmp_path, tag)
    registry.promote(MODEL, 1, actor="setup", reason="start")
    moves = 12
    results = run_children(CAS_CHILD, [[registry_root, "p1", str(moves)], [registry_root, "p2", str(moves)]], tmp_path)
    for result in results:
        assert result.returncode == 0, result.stderr
    history = registry.alias_history(MODEL)
    assert len(history) == 1 + 2 * moves
    assert [h["seq"] for h in history] == list(range(1, 2 * moves + 2))
    for before, after in zip(history, history[1:], strict=False):
        assert after["previous_version"] == before["version"]
    assert sorted(h["moved_by"] for h in history[1:]) == ["p1"] * moves + ["p2"] * moves
    conflicts = sum(json.loads(r.stdout)["conflicts"] for r in results)
    print(f"{conflicts} compare-and-swap conflicts between the two movers")


# --------------------------------------------------------------------------- concurrency and crashes


REGISTER_CHILD = """
import json
from searchtune.registry import ModelRegistry
manifest = ModelRegistry(sys.argv[3]).register_version("relevance", sys.argv[4], {"run_id": sys.argv[5]})
print(json.dumps({"version": manifest["version"]}))
"""


def test_two_processes_registering_at_once_both_get_versions(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    register(registry, tmp_path, "seed")
    folders = [make_version_files(tmp_path / f"files-{tag}", tag) for tag in ("p1", "p2")]
    results = run_children(REGISTER_CHILD, [[registry_root, folders[0], "p1"], [registry_root, folders[1], "p2"]],
                           tmp_path)
    for result in results:
        assert result.returncode == 0, result.stderr
    numbers = sorted(json.loads(r.stdout)["version"] for r in results)
    assert numbers == [2, 3]
    manifests = registry.versions(MODEL)
    assert [m["version"] for m in manifests] == [1, 2, 3]
    assert sorted(m["run_id"] for m in manifests[1:]) == ["p1", "p2"]
    for manifest in manifests[1:]:  # each version holds its own writer's files, none mixed
        dest = tmp_path / f"check-{manifest['version']}"
        registry.fetch(MODEL, manifest["version"], str(dest))
        assert json.loads((dest / "searchtune_model.json").read_text())["tag"] == manifest["run_id"]


KILLED_CHILD = """
import logging, signal
from searchtune.registry import ModelRegistry

class KillWhen(logging.Handler):
    # SIGKILL this process when a log line contains all the given texts: a crash, not a clean failure.
    def __init__(self, *texts):
        super().__init__()
        self.texts = texts
    def emit(self, record):
        if all(text in record.getMessage() for text in self.texts):
            os.kill(os.getpid(), signal.SIGKILL)

root, folder, watch = sys.argv[3], sys.argv[4], sys.argv[5]
if watch == "local":  # killed as the big file's turn comes, after the small files are written
    logger, texts = logging.getLogger("searchtune.registry"), ("uploading zz_big.bin",)
else:  # killed mid-way through the big file's resumable upload, once its first chunk was accepted (308)
    logger, texts = logging.getLogger("urllib3.connectionpool"), ("uploadType=resumable", '" 308 ')
logger.setLevel(logging.DEBUG)
logger.addHandler(KillWhen(*texts))
ModelRegistry(root).register_version("relevance", folder, {"run_id": "killed"})
print("finished without being killed")
"""


def test_writer_killed_mid_upload_leaves_listing_and_production_intact(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    register(registry, tmp_path, "a")
    registry.promote(MODEL, 1, actor="setup", reason="start")
    listed_before = registry.versions(MODEL)
    big = storage.RESUMABLE_THRESHOLD + 4 * 1024 * 1024  # resumable on GCS, in two chunks
    folder = make_version_files(tmp_path / "files-killed", "killed", big_bytes=big)
    watch = "gcs" if storage.is_gcs(registry_root) else "local"
    (result,) = run_children(KILLED_CHILD, [[registry_root, folder, watch]], tmp_path)
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    leftovers = [storage.relative(u, registry_root) for u in storage.list_prefix(registry.version_uri(MODEL, 2))]
    assert f"{MODEL}/versions/2/CLAIM" in leftovers and f"{MODEL}/versions/2/notes.json" in leftovers
    assert f"{MODEL}/versions/2/zz_big.bin" not in leftovers and f"{MODEL}/versions/2/MANIFEST.json" not in leftovers
    assert registry.versions(MODEL) == listed_before
    assert registry.version(MODEL, "latest")["version"] == 1
    registry.fetch(MODEL, "production", str(tmp_path / "prod"))
    assert json.loads((tmp_path / "prod" / "searchtune_model.json").read_text())["tag"] == "a"
    with pytest.raises(SearchtuneError, match="no version 2; available: v1"):
        registry.version(MODEL, 2)
    # The abandoned number is skipped, not reused: the next version is 3.
    assert register(registry, tmp_path, "after")["version"] == 3
    assert [m["version"] for m in registry.versions(MODEL)] == [1, 3]


WRITER_CHILD = """
from searchtune.registry import ModelRegistry
registry = ModelRegistry(sys.argv[3])
for folder in sys.argv[4:]:
    registry.register_version("relevance", folder, {"run_id": os.path.basename(folder)})
"""


def test_reader_never_sees_a_partial_version(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    folders = []
    for index in range(4):
        folder = make_version_files(tmp_path / f"files-w{index}", f"w{index}")
        for extra in range(8):  # more files: a longer window in which a version is half-written
            with open(os.path.join(folder, f"part-{extra}.bin"), "wb") as handle:
                handle.write(os.urandom(64 * 1024))
        folders.append(folder)
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(
        "import os, sys\n" + WRITER_CHILD), "-", "-", registry_root, *folders])
    seen, checks = set(), 0
    while True:
        finished = writer.poll() is not None
        for manifest in registry.versions(MODEL):
            for entry in manifest["files"]:  # every listed file is there, complete
                data = storage.read_bytes(storage.join(manifest["uri"], entry["path"]))
                assert len(data) == entry["size"], (manifest["version"], entry["path"])
            seen.add(manifest["version"])
            checks += 1
        if finished:
            break
    assert writer.returncode == 0
    assert seen == {1, 2, 3, 4}
    print(f"{checks} version checks while the writer was writing")
