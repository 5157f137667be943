"""The candidates log on a local folder and a real GCS emulator: records, order, concurrency."""

import json
import os
import sys

import pytest

from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry import ModelRegistry

sys.path.insert(0, os.path.dirname(__file__))  # tests/ is no package (pytest --import-mode=importlib)
from registry_helpers import MODEL, register, run_children  # noqa: E402


def test_records_are_kept_newest_first_and_never_overwritten(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    register(registry, tmp_path, "a")
    assert registry.candidates(MODEL) == []
    refused = registry.record_candidate(MODEL, {
        "run_id": "run/1", "created_at": "2026-11-24T05:00:00+00:00", "blessed": False,
        "reason": "AUC 0.55 below min_auc 0.60", "gate_metric": "roc_auc", "value": 0.55, "low": 0.52, "high": 0.58})
    blessed = registry.record_candidate(MODEL, {"run_id": "run-2", "blessed": True})
    assert refused["uri"].startswith(storage.join(registry_root, MODEL, "candidates") + "/")
    assert refused["uri"].endswith("-run-1.json")  # the run id made safe for an object name
    assert blessed["reason"] == "" and blessed["created_at"]  # defaults filled in
    listed = registry.candidates(MODEL)
    assert [c["run_id"] for c in listed] == ["run-2", "run/1"]
    assert listed[1]["value"] == 0.55 and listed[1]["reason"] == "AUC 0.55 below min_auc 0.60"
    assert [c["run_id"] for c in registry.candidates(MODEL, limit=1)] == ["run-2"]
    # The log is not a version: listings and verification are unaffected.
    assert [m["version"] for m in registry.versions(MODEL)] == [1] and registry.models() == [MODEL]
    assert registry.verify(MODEL).ok
    with pytest.raises(storage.PreconditionFailed):
        storage.create_bytes(refused["uri"], b"{}")  # what the log writes can only be created once


@pytest.mark.parametrize("record, message", [
    ({"blessed": True}, "'run_id' must be a string"),
    ({"run_id": "r", "blessed": "yes"}, "'blessed' must be true or false"),
    ({"run_id": "r", "blessed": True, "when": {1, 2}}, "not JSON-serialisable"),
    (["run_id", "r"], "must be a dict"),
])
def test_bad_records_are_refused_and_nothing_is_written(tmp_path, record, message):
    registry = ModelRegistry(str(tmp_path / "registry"))
    with pytest.raises(SearchtuneError, match=message):
        registry.record_candidate(MODEL, record)
    assert storage.list_prefix(str(tmp_path / "registry")) == []


def test_an_unreadable_record_is_shown_as_such(registry_root):
    registry = ModelRegistry(registry_root)
    registry.record_candidate(MODEL, {"run_id": "good", "blessed": False, "reason": "r"})
    storage.write_bytes(storage.join(registry_root, MODEL, "candidates", "99999999T000000.000000Z-x.json"), b"{oops")
    newest, older = registry.candidates(MODEL)
    assert newest["unreadable"].startswith("not valid JSON") and older["run_id"] == "good"


def test_same_name_gets_a_suffix_and_the_same_record_is_kept_once(registry_root, monkeypatch):
    from searchtune.registry import candidates

    monkeypatch.setattr(candidates, "stamp", lambda: "20261124T050000.000000Z")  # every record in one instant
    registry = ModelRegistry(registry_root)
    record = {"run_id": "r", "created_at": "2026-11-24T05:00:00+00:00", "blessed": False, "reason": "first"}
    first = registry.record_candidate(MODEL, record)
    again = registry.record_candidate(MODEL, record)  # a retried request: the same bytes, the same object
    other = registry.record_candidate(MODEL, {**record, "reason": "second"})
    assert first["uri"] == again["uri"] and first["uri"].endswith("/20261124T050000.000000Z-r.json")
    assert other["uri"].endswith("/20261124T050000.000000Z-r-2.json")
    assert sorted(c["reason"] for c in registry.candidates(MODEL)) == ["first", "second"]


CANDIDATE_CHILD = """
from searchtune.registry import ModelRegistry
registry = ModelRegistry(sys.argv[3])
for index in range(int(sys.argv[5])):
    # The same run id and (most likely) the same microsecond in both children: names collide.
    registry.record_candidate("relevance", {"run_id": "same-run", "blessed": index % 2 == 0,
                                            "reason": f"{sys.argv[4]} #{index}"})
"""


def test_two_processes_recording_at_once_lose_nothing(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    per_child = 15
    results = run_children(CANDIDATE_CHILD, [[registry_root, "p1", str(per_child)], [registry_root, "p2", str(per_child)]],
                           tmp_path)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    records = registry.candidates(MODEL, limit=None)
    assert sorted(r["reason"] for r in records) == sorted(f"{p} #{i}" for p in ("p1", "p2") for i in range(per_child))
    for child in ("p1", "p2"):  # newest first: each writer's records appear in reverse order of writing
        mine = [int(r["reason"].split("#")[1]) for r in records if r["reason"].startswith(child)]
        assert mine == sorted(mine, reverse=True)
    assert len({r["uri"] for r in records}) == 2 * per_child
    print(json.dumps({"records": len(records)}))
