"""Repairing a broken ``production`` alias on a local folder and a real GCS emulator, history kept."""

import json
import os
import sys

import pytest

from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry import AliasConflict, ModelRegistry

sys.path.insert(0, os.path.dirname(__file__))  # tests/ is no package (pytest --import-mode=importlib)
from registry_helpers import MODEL, register, run_children, snapshot  # noqa: E402


def alias_uri(root: str) -> str:
    return storage.join(root, MODEL, "aliases", "production.json")


@pytest.fixture
def three_versions(registry_root, tmp_path) -> ModelRegistry:
    """v1, v2, v3 registered; production moved to v1 then v2 (history #1, #2)."""
    registry = ModelRegistry(registry_root)
    for tag in "abc":
        register(registry, tmp_path, tag)
    registry.promote(MODEL, 1, actor="setup", reason="first")
    registry.promote(MODEL, 2, actor="setup", reason="second")
    return registry


@pytest.mark.parametrize("garbage", [b"{\"version\": 2, \"seq\"", b"", b"[2]", b'{"version": "two", "seq": 2}'])
def test_a_broken_alias_is_refused_without_repair_and_nothing_changes(three_versions, garbage):
    registry = three_versions
    storage.write_bytes(alias_uri(registry.root), garbage)
    before = snapshot(registry.root)
    for action in (lambda: registry.alias(MODEL), lambda: registry.version(MODEL, "production"),
                   lambda: registry.promote(MODEL, 3, actor="ops", reason="r"),
                   lambda: registry.rollback(MODEL, actor="ops", reason="r"),
                   lambda: registry.move_alias(MODEL, 3, expected=2, actor="pipeline", reason="r"),
                   lambda: registry.check_writable(MODEL)):
        with pytest.raises(SearchtuneError) as error:
            action()
        message = str(error.value)
        assert not isinstance(error.value, AliasConflict), message  # the pipeline must not retry this as a race
        assert message.startswith(f"{alias_uri(registry.root)}: alias record cannot be read ("), message
        assert "models promote" in message and "--repair" in message and "\n" not in message
    assert snapshot(registry.root) == before
    assert [h["version"] for h in registry.alias_history(MODEL)] == [1, 2]  # history still readable


def test_promote_repairs_a_broken_alias_and_history_shows_it(three_versions):
    registry = three_versions
    storage.write_bytes(alias_uri(registry.root), b"{\"version\": 2, \"se")  # e.g. a truncated hand edit
    record = registry.promote(MODEL, 3, actor="ops", reason="fix the alias", repair=True)
    assert (record["version"], record["seq"], record["previous_version"]) == (3, 3, 2)
    assert record["repaired"]["head"] == "{\"version\": 2, \"se"
    assert record["repaired"]["problem"].startswith("not valid JSON")
    assert record["repaired"]["previous_version_from_history_seq"] == 2
    assert registry.version(MODEL, "production")["version"] == 3
    history = registry.alias_history(MODEL)
    assert [(h["seq"], h["previous_version"], h["version"]) for h in history] == [(1, None, 1), (2, 1, 2), (3, 2, 3)]
    assert "repaired" in history[2] and "repaired" not in history[1]
    assert registry.verify(MODEL).ok
    # Afterwards the alias is ordinary again: rollback goes to the last version recorded before the break.
    assert registry.rollback(MODEL, actor="ops", reason="back")["version"] == 2


def test_rollback_repairs_a_broken_alias_from_history(three_versions):
    registry = three_versions
    registry.promote(MODEL, 3, actor="ops", reason="third")  # history #3: v2 -> v3
    storage.write_bytes(alias_uri(registry.root), b"\x00\xff garbage")
    record = registry.rollback(MODEL, actor="ops", reason="v3 broke and so did the alias", repair=True)
    # The last recorded move was v2 -> v3, so rolling it back means v2; v3 is what it replaces.
    assert (record["version"], record["previous_version"], record["seq"]) == (2, 3, 4)
    assert registry.version(MODEL, "production")["version"] == 2
    assert [h["version"] for h in registry.alias_history(MODEL)] == [1, 2, 3, 2]
    assert registry.rollback(MODEL, actor="ops", reason="undo")["version"] == 3  # ordinary again


def test_rollback_repair_needs_history_with_an_earlier_target(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    register(registry, tmp_path, "a")
    storage.write_bytes(alias_uri(registry_root), b"not json")
    with pytest.raises(SearchtuneError, match="no alias history to roll back from; use 'searchtune models promote"):
        registry.rollback(MODEL, actor="ops", reason="r", repair=True)
    registry.promote(MODEL, 1, actor="ops", reason="r", repair=True)
    assert [(h["seq"], h["version"], h["previous_version"]) for h in registry.alias_history(MODEL)] == [(1, 1, None)]
    storage.write_bytes(alias_uri(registry_root), b"not json again")
    with pytest.raises(SearchtuneError, match=r"last recorded move \(#1, to v1\) has no earlier target"):
        registry.rollback(MODEL, actor="ops", reason="r", repair=True)


def test_an_alias_pointing_at_a_missing_version_can_be_promoted_away(three_versions):
    registry = three_versions
    dangling = {**registry.alias(MODEL), "version": 9, "seq": 3, "previous_version": 2}
    storage.write_bytes(alias_uri(registry.root), json.dumps(dangling).encode())
    with pytest.raises(SearchtuneError, match="points at v9, which has no manifest"):
        registry.check_writable(MODEL)
    assert registry.verify(MODEL).problems() == ["@production: points at v9, which has no manifest (no such version)"]
    record = registry.promote(MODEL, 3, actor="ops", reason="away from v9")  # ordinary compare-and-swap
    assert (record["previous_version"], record["seq"]) == (9, 4)
    assert [h["version"] for h in registry.alias_history(MODEL)] == [1, 2, 9, 3]
    registry.check_writable(MODEL)


REPAIR_CHILD = """
import json
from searchtune.registry import AliasConflict, ModelRegistry
try:
    record = ModelRegistry(sys.argv[3]).promote("relevance", int(sys.argv[4]), actor=sys.argv[4], reason="race",
                                                repair=True)
    print(json.dumps({"won": record["version"]}))
except AliasConflict as conflict:
    print(json.dumps({"lost_to": conflict.current["version"]}))
"""


def test_two_repairs_at_once_replace_the_broken_record_once(three_versions, tmp_path):
    """Both repairers read the broken record; compare-and-swap on its generation lets one replace it.

    The other either loses (AliasConflict naming the winner) or, if it read only after the
    winner wrote, makes an ordinary move from the winner's record: never a second repair.
    """
    registry = three_versions
    storage.write_bytes(alias_uri(registry.root), b"broken")
    results = run_children(REPAIR_CHILD, [[registry.root, "1"], [registry.root, "3"]], tmp_path)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    outcomes = [json.loads(r.stdout) for r in results]
    history = registry.alias_history(MODEL)
    assert [h["seq"] for h in history] == list(range(1, len(history) + 1))
    repaired = [h for h in history if "repaired" in h]
    assert len(repaired) == 1 and repaired[0]["seq"] == 3 and repaired[0]["repaired"]["head"] == "broken"
    won = [o["won"] for o in outcomes if "won" in o]
    assert len(history) == 2 + len(won)
    assert [o["lost_to"] for o in outcomes if "lost_to" in o] in ([], [repaired[0]["version"]])
    print(f"repair race: {outcomes}")
