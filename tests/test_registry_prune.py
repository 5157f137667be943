"""``prune``: what it keeps and why, and that it stays safe while runs register, move and read.

Every test runs on a local folder and on a real GCS emulator. The interleavings are forced
with logging handlers that act when the registry logs a step (no part of the registry is
replaced), and the concurrency test races a real registering process against prunes.
"""

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry import ModelRegistry, leases

sys.path.insert(0, os.path.dirname(__file__))  # tests/ is no package (pytest --import-mode=importlib)
from registry_helpers import MODEL, make_version_files, register, run_children, snapshot  # noqa: E402


@pytest.fixture
def six_versions(registry_root, tmp_path) -> ModelRegistry:
    """v1..v6; production moved to v2 then v3 (rollback target v2); alias 'staging' on v1."""
    registry = ModelRegistry(registry_root)
    for tag in "abcdef":
        register(registry, tmp_path, tag)
    registry.promote(MODEL, 2, actor="setup", reason="first")
    registry.promote(MODEL, 3, actor="setup", reason="second")
    registry.move_alias(MODEL, 1, expected=None, actor="setup", reason="canary", alias="staging")
    return registry


def numbers(registry: ModelRegistry) -> list[int]:
    return [m["version"] for m in registry.versions(MODEL)]


def test_prune_keeps_the_newest_aliased_rollback_target_and_leased_versions(six_versions, tmp_path):
    registry = six_versions
    with leases.held(registry.layout, MODEL, 4, purpose="an evaluation reading v4"):
        before = snapshot(registry.root)
        planned = registry.prune(MODEL, 1, dry_run=True, actor="test", min_age_minutes=0)
        assert snapshot(registry.root) == before  # a dry run changes nothing
        reasons = {d.version: d.kept_because for d in planned.decisions}
        assert reasons[6] == "newest 1" and reasons[3] == "@production" and reasons[1] == "@staging"
        assert reasons[2] == "rollback target of @production" and reasons[4].startswith("being read (lease until ")
        assert [d.version for d in planned.doomed] == [5]

        outcome = registry.prune(MODEL, 1, dry_run=False, actor="test", min_age_minutes=0)
    assert outcome.deleted == [5] and not outcome.given_back
    assert numbers(registry) == [1, 2, 3, 4, 6]
    assert storage.list_prefix(registry.version_uri(MODEL, 5)) == []
    assert not storage.exists(registry.layout.prune_lock(MODEL))  # the lock is gone again
    assert registry.verify(MODEL).ok
    assert registry.rollback(MODEL, actor="ops", reason="r")["version"] == 2  # the rollback target is still there
    # Nothing needs v3 or v4 now (the lease is gone), so they go; numbers are never reused.
    assert registry.prune(MODEL, 1, dry_run=False, actor="test", min_age_minutes=0).deleted == [4]
    assert registry.prune(MODEL, 2, dry_run=False, actor="test", min_age_minutes=0).deleted == []
    assert register(registry, tmp_path, "g")["version"] == 7


def test_versions_registered_within_the_hour_are_kept_for_the_run_that_may_promote_them(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    for tag in "abc":
        register(registry, tmp_path, tag)
    outcome = registry.prune(MODEL, 1, dry_run=False, actor="cron")  # default: an hour
    assert outcome.deleted == [] and [d.kept_because for d in outcome.decisions][2] == "newest 1"
    assert all(d.kept_because.startswith("registered ") and d.kept_because.endswith(
        " min ago (its run may be promoting it)") for d in outcome.decisions[:2]), outcome.decisions
    assert registry.prune(MODEL, 1, dry_run=False, actor="cron", min_age_minutes=0).deleted == [1, 2]
    with pytest.raises(SearchtuneError, match="--min-age must be 0 or more minutes, got -1"):
        registry.prune(MODEL, 1, dry_run=True, actor="cron", min_age_minutes=-1)


def test_bad_keep_unreadable_alias_and_a_running_prune_are_refused_and_change_nothing(six_versions):
    registry = six_versions
    before = snapshot(registry.root)
    with pytest.raises(SearchtuneError, match=r"--keep must be at least 1 \(the newest version is always kept\), got 0"):
        registry.prune(MODEL, 0, dry_run=False, actor="test", min_age_minutes=0)
    storage.write_bytes(registry.layout.alias(MODEL, "staging"), b"{broken")
    broken = snapshot(registry.root)
    with pytest.raises(SearchtuneError, match="staging.json: alias record cannot be read"):
        registry.prune(MODEL, 1, dry_run=False, actor="test", min_age_minutes=0)
    assert snapshot(registry.root) == broken
    storage.write_bytes(registry.layout.alias(MODEL, "staging"), before[f"{MODEL}/aliases/staging.json"])

    lock = registry.layout.prune_lock(MODEL)
    import datetime as dt
    import socket

    later = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=30)).isoformat()
    storage.write_bytes(lock, json.dumps({"by": "cron@elsewhere", "host": "elsewhere", "pid": 1, "at": "then",
                                          "expires_at": later}).encode())
    held = snapshot(registry.root)
    with pytest.raises(SearchtuneError, match="another prune of 'relevance' is running .by cron@elsewhere"):
        registry.prune(MODEL, 1, dry_run=False, actor="test", min_age_minutes=0)
    assert snapshot(registry.root) == held
    # A lock of a process of this host that is gone is taken over (a prune that was killed).
    storage.write_bytes(lock, json.dumps({"by": "me", "host": socket.gethostname(), "pid": dead_pid(),
                                          "at": "then", "expires_at": later}).encode())
    assert registry.prune(MODEL, 1, dry_run=False, actor="test", min_age_minutes=0).deleted == [4, 5]
    assert not storage.exists(lock) and registry.verify(MODEL).ok


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


class OnLog(logging.Handler):
    """Call ``action`` once, the first time a log line of ``logger`` contains ``text``."""

    def __init__(self, logger: str, text: str, action):
        super().__init__(logging.DEBUG)
        self.logger, self.text, self.action, self.done = logging.getLogger(logger), text, action, False

    def emit(self, record):
        if not self.done and self.text in record.getMessage():
            self.done = True
            self.action()

    def __enter__(self):
        self.level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)


def test_a_promote_that_lands_on_a_version_being_pruned_is_undone(six_versions):
    """The mover resolved v4 before the prune hid it and writes its alias after the prune looked."""
    registry = six_versions
    pruned = []
    with OnLog("searchtune.registry.aliases", "moving relevance@production from v3 to v4",
               lambda: pruned.append(registry.prune(MODEL, 1, dry_run=False, actor="cron", min_age_minutes=0))):
        with pytest.raises(SearchtuneError, match="relevance v4 was pruned while production was being moved to it; "
                                                  "production still points at v3"):
            registry.promote(MODEL, 4, actor="ops", reason="r")
    assert pruned[0].deleted == [4, 5]
    assert registry.alias(MODEL)["version"] == 3 and [h["version"] for h in registry.alias_history(MODEL)] == [2, 3]
    assert registry.verify(MODEL).ok


def test_a_version_leased_while_being_pruned_gets_its_manifest_back(six_versions):
    """The reader leases v4 after the prune hid it but before the prune looks again."""
    registry = six_versions
    files_before = {u: b for u, b in snapshot(registry.root).items() if u.startswith(f"{MODEL}/versions/4/")}
    with contextlib.ExitStack() as stack:
        with OnLog("searchtune.registry.retention", "hid relevance v5",
                   lambda: stack.enter_context(leases.held(registry.layout, MODEL, 4, purpose="late reader"))):
            outcome = registry.prune(MODEL, 1, dry_run=False, actor="cron", min_age_minutes=0)
    assert outcome.deleted == [5] and outcome.given_back[4].startswith("being read")
    assert {u: b for u, b in snapshot(registry.root).items() if u.startswith(f"{MODEL}/versions/4/")} == files_before
    assert numbers(registry) == [1, 2, 3, 4, 6] and registry.verify(MODEL).ok


KILLED_PRUNE = """
import logging, signal
from searchtune.registry import ModelRegistry

class KillWhen(logging.Handler):
    def emit(self, record):
        if "deleting relevance v4" in record.getMessage():
            os.kill(os.getpid(), signal.SIGKILL)

logger = logging.getLogger("searchtune.registry.retention")
logger.setLevel(logging.DEBUG)
logger.addHandler(KillWhen())
ModelRegistry(sys.argv[3]).prune("relevance", 1, dry_run=False, actor="killed", min_age_minutes=0)
print("finished without being killed")
"""


def test_a_prune_killed_midway_hides_versions_whole_and_the_next_prune_finishes(six_versions, tmp_path):
    registry = six_versions
    (result,) = run_children(KILLED_PRUNE, [[registry.root]], tmp_path)
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    # Killed after hiding v4 and v5, before deleting a file: both are invisible, and whole.
    assert numbers(registry) == [1, 2, 3, 6]
    report = registry.verify(MODEL)
    assert report.ok and report.being_pruned == [4, 5]
    assert storage.exists(registry.layout.prune_lock(MODEL))
    # A reader leases v5 now: the next prune (taking over the dead prune's lock) gives it back.
    with leases.held(registry.layout, MODEL, 5, purpose="reader"):
        outcome = registry.prune(MODEL, 1, dry_run=False, actor="next", min_age_minutes=0)
    assert outcome.deleted == [4] and list(outcome.given_back) == [5]
    assert numbers(registry) == [1, 2, 3, 5, 6]
    report = registry.verify(MODEL)
    assert report.ok and report.being_pruned == [] and report.incomplete == []
    registry.fetch(MODEL, 5, str(tmp_path / "v5"))  # its files are all there, checksums verified


CONCURRENT_REGISTRAR = """
from searchtune.registry import ModelRegistry
registry = ModelRegistry(sys.argv[3])
for folder in sys.argv[4:]:  # what the pipeline's register step does: register, then move production by CAS
    version = registry.register_version("relevance", folder, {"run_id": os.path.basename(folder)})["version"]
    current = registry.alias("relevance")
    registry.move_alias("relevance", version, expected=current["version"], actor="run", reason="blessed")
    print(version, flush=True)
"""


def test_prune_running_during_registrations_leaves_a_consistent_registry(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    for tag in "abc":
        register(registry, tmp_path, tag)
    registry.promote(MODEL, 3, actor="setup", reason="start")
    folders = []
    for index in range(6):
        folder = make_version_files(tmp_path / f"files-r{index}", f"r{index}")
        for extra in range(6):  # more files: a longer window in which a version is half-written
            with open(os.path.join(folder, f"part-{extra}.bin"), "wb") as handle:
                handle.write(os.urandom(32 * 1024))
        folders.append(folder)
    registrar = subprocess.Popen([sys.executable, "-c", "import os, sys\n" + textwrap.dedent(CONCURRENT_REGISTRAR),
                                  "-", "-", registry_root, *folders], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
    fetched, refused, stop = [], [], threading.Event()

    def read_production():  # a champion step: fetch whatever production is, checksums verified
        while not stop.is_set():
            dest = tmp_path / f"champion-{len(fetched) + len(refused)}"
            try:
                version = registry.alias(MODEL)["version"]
                registry.fetch(MODEL, version, str(dest))
                fetched.append(version)
            except SearchtuneError as error:  # the version went between reading the alias and fetching
                assert "pruned just now" in str(error) or "has no version" in str(error), error
                refused.append(str(error))

    reader = threading.Thread(target=read_production)
    reader.start()
    deleted_while_registering = []
    try:
        while registrar.poll() is None:
            deleted_while_registering += registry.prune(MODEL, 2, dry_run=False, actor="cron", min_age_minutes=0).deleted
    finally:
        stop.set()
        reader.join()
    out, err = registrar.communicate()
    assert registrar.returncode == 0, err
    assert [int(n) for n in out.split()] == [4, 5, 6, 7, 8, 9]
    assert deleted_while_registering, "no prune deleted anything while the registrations ran"
    assert fetched
    registry.prune(MODEL, 2, dry_run=False, actor="cron", min_age_minutes=0)
    assert registry.alias(MODEL)["version"] == 9
    assert numbers(registry) == [8, 9]  # newest 2; production v9 and its rollback target v8 among them
    result = subprocess.run([sys.executable, "-m", "searchtune.cli", "models", "verify", "--registry", registry_root],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "verified: no problems found"
    assert "note:" not in result.stdout  # no half-pruned or half-registered version left
    print(f"{len(deleted_while_registering)} version(s) pruned during the registrations; "
          f"{len(fetched)} fetches of production, {len(refused)} found their version pruned")
