"""Aliases (``production`` and others): compare-and-swap moves, history, repair of a broken record.

* **Moves** are compare-and-swap on the alias object's generation: the caller states which
  version it believes the alias points at, and the write fails with ``AliasConflict`` if
  someone moved it meanwhile.
* **History**: each alias record carries a sequence number ``seq``; after a successful move
  the record is also created as ``history/<alias>/<seq>.json``. The alias object is the
  truth; if a mover dies between the two writes, the next mover (and ``history``) writes
  the missing history record from the alias object itself, so the history has no holes
  and never records a move that did not happen.
* **Repair**: an alias object that cannot be read (not JSON, or no valid ``version`` /
  ``seq``) blocks every ordinary move, because nobody can say where it points. A move
  with ``repair=True`` replaces it anyway, still by compare-and-swap on the broken
  object's own generation (so two repairers cannot both win). The new record continues
  the history (``seq`` one past the highest recorded), takes ``previous_version`` from
  the last readable history record, and keeps what was replaced under ``repaired``
  (the problem, SHA-256, size and the first bytes), so the history shows the break.
* **Pruned targets**: a mover writes the alias first and checks that the version's manifest
  still exists second; ``retention`` hides a version first and reads the aliases second, so
  one of them sees the other. A mover that finds its target pruned puts the old record back
  and says so; a prune that finds an alias on a hidden version gives it its manifest back.
* **Clearing**: an alias that points at a version that no longer exists, on a model that
  has no version at all, can only be removed (``clear``). The removal is recorded as a
  history record with ``version: null`` and ``cleared``; the next move continues the
  history's numbering, so nothing is overwritten.

Longer than 300 lines because moves, history and repair share one compare-and-swap
protocol; split, a reader would have to hold the protocol across modules to check it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry.layout import PRODUCTION, AliasConflict, Layout, dumps, now, v

log = logging.getLogger(__name__)

_KEPT_BYTES = 1000  # of a replaced unreadable record, in the repair record


@dataclasses.dataclass(frozen=True)
class AliasState:
    """One read of an alias object.

    Attributes:
        uri: the alias object.
        record: the parsed record; None if the object is absent or unreadable.
        raw: the object's bytes; None if absent.
        generation: the token for compare-and-swap; None if absent.
        problem: why the bytes are not a usable record; None if absent or fine.
    """

    uri: str
    record: dict | None
    raw: bytes | None
    generation: storage.Generation | None
    problem: str | None

    @property
    def version(self) -> int | None:
        """The version the alias points at; None if it is absent or unreadable."""
        return None if self.record is None else int(self.record["version"])


def parse_record(raw: bytes, cleared_ok: bool = False) -> tuple[dict | None, str | None]:
    """(record, None) for a usable alias or history record, else (None, what is wrong).

    Args:
        raw: the object's bytes.
        cleared_ok: also accept the history record of a ``clear`` (``version`` null).
    """
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return None, f"not valid JSON ({error})"
    if not isinstance(record, dict):
        return None, f"not a JSON object but {type(record).__name__}"
    cleared = cleared_ok and record.get("cleared") and record.get("version") is None
    for key in ("seq",) if cleared else ("version", "seq"):
        value = record.get(key)
        if type(value) is not int or value < 1:
            return None, f"'{key}' is {value!r}, not a positive whole number"
    return record, None


def read(layout: Layout, model: str, alias: str) -> AliasState:
    """Read an alias object once, tolerating a broken one (see ``AliasState.problem``)."""
    uri = layout.alias(model, alias)
    raw, generation = storage.read_with_generation(uri)
    record, problem = (None, None) if raw is None else parse_record(raw)
    return AliasState(uri, record, raw, generation, problem)


def unreadable(layout: Layout, model: str, alias: str, state: AliasState) -> SearchtuneError:
    """The one-line error for a broken alias, saying how to repair it."""
    message = f"{state.uri}: alias record cannot be read ({state.problem})"
    if alias == PRODUCTION:
        ref = f"{layout.root}/{model}"
        return SearchtuneError(f"{message}; repair it with 'searchtune models promote {ref} VERSION --repair' "
                               f"or 'searchtune models rollback {ref} --repair' (history is kept)")
    return SearchtuneError(f"{message}; move it with repair=True (history is kept)")


def dangling(layout: Layout, model: str, alias: str, state: AliasState, visible: set[int]) -> SearchtuneError:
    """The one-line error for an alias whose version has no manifest, saying how to get out of it."""
    ref = f"{layout.root}/{model}"
    if visible:
        listed = ", ".join(f"v{n}" for n in sorted(visible))
        return SearchtuneError(f"{state.uri}: points at v{state.version}, which has no manifest; point it at an existing "
                               f"version ({listed}): 'searchtune models promote {ref} VERSION'")
    return no_version_left(layout, model, alias, f"points at v{state.version}, which has no manifest")


def no_version_left(layout: Layout, model: str, alias: str, what: str) -> SearchtuneError:
    """The one-line error for a broken alias on a model without any version: how to start again."""
    ref = f"{layout.root}/{model}"
    return SearchtuneError(f"{layout.alias(model, alias)}: {what}, and '{model}' has no version at all in {layout.root}; "
                           f"start again with 'searchtune models promote {ref} --repair' (removes the alias, keeps its "
                           "history), then run the pipeline: its first blessed model becomes production")


def names(layout: Layout, model: str) -> list[str]:
    """The aliases of ``model`` that have an alias object (readable or not)."""
    aliases_uri = layout.aliases(model)
    found = [storage.relative(u, aliases_uri) for u in storage.list_prefix(aliases_uri)]
    return sorted(n[: -len(".json")] for n in found if "/" not in n and n.endswith(".json"))


def history_records(layout: Layout, model: str, alias: str) -> tuple[dict[int, dict], list[str]]:
    """The stored history records by ``seq``, and a problem line for each one that is unusable."""
    records, problems = {}, []
    history_uri = layout.history(model, alias)
    for uri in storage.list_prefix(history_uri):
        record, problem = parse_record(storage.read_bytes(uri), cleared_ok=True)
        name = storage.relative(uri, history_uri)
        if record is None:
            problems.append(f"history {name}: {problem}")
        elif name != f"{record['seq']:08d}.json":
            problems.append(f"history {name}: holds seq {record['seq']}")
        else:
            records[record["seq"]] = record
    return records, problems


def history(layout: Layout, model: str, alias: str) -> list[dict]:
    """Every move of ``alias``, oldest first, including the current record when readable.

    Unusable history records are skipped with a warning (``verify`` reports them).
    """
    records, problems = history_records(layout, model, alias)
    for problem in problems:
        log.warning("%s@%s: %s", model, alias, problem)
    state = read(layout, model, alias)
    if state.record is not None:
        records.setdefault(state.record["seq"], state.record)
    return [records[seq] for seq in sorted(records)]


def record_history(layout: Layout, model: str, alias: str, record: dict) -> None:
    """Create history/<alias>/<seq>.json from an alias record (no-op if already there)."""
    uri = layout.history_record(model, alias, record["seq"])
    try:
        storage.create_bytes(uri, dumps(record))
    except storage.PreconditionFailed:
        existing, _problem = parse_record(storage.read_bytes(uri))
        if existing != record:
            log.warning("alias history %s/%s #%d differs from the alias record", model, alias, record["seq"])


def _repair_details(layout: Layout, model: str, alias: str, state: AliasState) -> tuple[dict, dict | None, int]:
    """(what is replaced, the last readable history record, the next seq) for a repair."""
    known, _problems = history_records(layout, model, alias)
    last = known[max(known)] if known else None
    replaced = {
        "problem": state.problem,
        "sha256": hashlib.sha256(state.raw).hexdigest(),
        "size": len(state.raw),
        "head": state.raw[:_KEPT_BYTES].decode("utf-8", "replace"),
        "previous_version_from_history_seq": None if last is None else last["seq"],
    }
    return replaced, last, max(known, default=0) + 1


def rollback_target(layout: Layout, model: str, alias: str, state: AliasState) -> tuple[int, int | None]:
    """(version to roll back to, version the alias is believed to point at now).

    For a readable alias that is its ``previous_version``. For an unreadable one it is the
    ``previous_version`` of the last readable history record: the alias is taken to point
    where that last recorded move left it.

    Raises:
        SearchtuneError: there is no alias, or nothing earlier to go back to.
    """
    if state.raw is None:
        raise SearchtuneError(f"model '{model}' has no {alias} alias to roll back")
    if state.record is not None:
        previous = state.record.get("previous_version")
        if previous is None:
            raise SearchtuneError(f"{model}@{alias} (v{state.version}) has no earlier target to roll back to")
        return int(previous), state.version
    known, _problems = history_records(layout, model, alias)
    if not known:
        raise SearchtuneError(f"{state.uri}: alias record cannot be read ({state.problem}) and there is no alias history "
                              f"to roll back from; use 'searchtune models promote {layout.root}/{model} VERSION --repair'")
    last = known[max(known)]
    if last.get("previous_version") is None:
        raise SearchtuneError(f"{state.uri}: alias record cannot be read and its last recorded move (#{last['seq']}, "
                              f"to v{last['version']}) has no earlier target; use 'models promote ... VERSION --repair'")
    return int(last["previous_version"]), None


def move(layout: Layout, model: str, alias: str, state: AliasState, version: int, *, expected: int | None,
         actor: str, reason: str, run_id: str = "", repair: bool = False) -> dict:
    """Point ``alias`` at ``version`` if it is still as ``state`` saw it (compare-and-swap).

    Args:
        layout: the registry's layout.
        model: the model's name.
        alias: the alias name.
        state: the alias as read just before (``read``).
        version: the (visible) version to point at.
        expected: the version the caller believes the alias points at; ignored when the
            alias is unreadable and ``repair`` is set.
        actor: who moves it (recorded).
        reason: why (recorded).
        run_id: the pipeline run that moves it, if any (recorded).
        repair: allow replacing an unreadable alias record (see the module docstring).

    Returns:
        The new alias record.

    Raises:
        AliasConflict: the alias points elsewhere than ``expected``, or changed since ``state``.
        SearchtuneError: the alias is unreadable and ``repair`` is not set, or it already
            points at ``version``.
    """
    record = {"alias": alias, "model": model, "version": version, "moved_at": now(), "moved_by": actor,
              "run_id": run_id, "reason": reason}
    if state.problem is not None:
        if not repair:
            raise unreadable(layout, model, alias, state)
        replaced, last, seq = _repair_details(layout, model, alias, state)
        record.update(previous_version=None if last is None else last["version"], seq=seq, repaired=replaced)
        log.warning("%s@%s: replacing an unreadable alias record (%s)", model, alias, state.problem)
    else:
        if state.record is not None:
            record_history(layout, model, alias, state.record)  # repair a mover that died before writing it
        if state.version != expected:
            raise AliasConflict(f"{model}@{alias} points at {v(state.version)}, not {v(expected)} as expected; "
                                "it was moved by someone else", state.record)
        if state.version == version:
            raise SearchtuneError(f"{model}@{alias} already points at v{version}")
        record.update(previous_version=state.version, seq=_next_seq(layout, model, alias, state))
    data = dumps(record)
    log.debug("moving %s@%s from %s to v%d", model, alias, v(state.version), version)
    try:
        storage.write_if_generation_matches(state.uri, data, state.generation)
    except storage.PreconditionFailed:
        now_state = read(layout, model, alias)
        if now_state.raw != data:  # unless a retried request of ours is what landed
            raise AliasConflict(f"{model}@{alias} moved to {v(now_state.version)} while being moved to v{version}",
                                now_state.record) from None
    if not storage.exists(layout.manifest(model, version)):
        _undo(layout, model, alias, state, data, version)  # pruned meanwhile: see the module docstring
    record_history(layout, model, alias, record)
    log.info("%s@%s: %s -> v%d by %s (%s)", model, alias, v(record["previous_version"]), version, actor, reason)
    return record


def _next_seq(layout: Layout, model: str, alias: str, state: AliasState) -> int:
    """One past the current record's ``seq``; for an absent alias one past its history (after a ``clear``)."""
    if state.record is not None:
        return state.record["seq"] + 1
    known, _problems = history_records(layout, model, alias)
    return max(known, default=0) + 1


def _undo(layout: Layout, model: str, alias: str, state: AliasState, data: bytes, version: int) -> None:
    """Put back the record ``move`` replaced (if ours is still there), then raise: the target was pruned."""
    raw, generation = storage.read_with_generation(state.uri)
    if raw == data:
        try:
            if state.raw is None:
                storage.delete(state.uri)
            else:
                storage.write_if_generation_matches(state.uri, state.raw, generation)
        except storage.PreconditionFailed:
            pass  # moved on by someone else already: their record stands
    raise SearchtuneError(f"{model} v{version} was pruned while {alias} was being moved to it; {alias} still points "
                          f"at {v(state.version)}")


def clear(layout: Layout, model: str, alias: str, state: AliasState, visible: set[int], *, actor: str,
          reason: str) -> dict:
    """Remove an alias that points at no existing version, on a model that has no version at all.

    The only way out of that state: nothing exists to point the alias at, and every run
    refuses to start while the alias points nowhere. Removing it lets the next run start
    as a first run. The removal is recorded in the history (``version`` null, ``cleared``).

    Returns:
        The history record of the removal.

    Raises:
        SearchtuneError: there is no such alias, the model has versions (promote one
            instead), or the alias points at an existing version.
        AliasConflict: the alias changed since ``state`` was read.
    """
    ref = f"{layout.root}/{model}"
    if state.raw is None:
        raise SearchtuneError(f"model '{model}' has no {alias} alias in {layout.root}; there is nothing to repair")
    if visible:
        listed = ", ".join(f"v{n}" for n in sorted(visible))
        raise SearchtuneError(f"say which version {alias} should point at ({listed}): "
                              f"'searchtune models promote {ref} VERSION --repair'")
    if state.record is not None:
        record_history(layout, model, alias, state.record)  # a mover that died before writing it
    problem = state.problem or f"points at v{state.version}, which has no manifest"
    known, _problems = history_records(layout, model, alias)
    seq = max([*known, 0 if state.record is None else state.record["seq"]]) + 1
    record = {"alias": alias, "model": model, "version": None, "previous_version": state.version, "seq": seq,
              "moved_at": now(), "moved_by": actor, "run_id": "", "reason": reason,
              "cleared": f"{problem}; '{model}' had no version"}
    if read(layout, model, alias).raw != state.raw:
        raise AliasConflict(f"{model}@{alias} changed while being cleared; look again", None)
    storage.delete(state.uri)
    storage.create_bytes(layout.history_record(model, alias, seq), dumps(record))
    log.info("%s@%s: removed (%s); history #%d records it", model, alias, problem, seq)
    return record
