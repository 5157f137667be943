"""Retention: ``prune`` deletes old versions beyond the newest N, never one that is still needed.

Kept, whatever their age:

* the newest ``keep`` versions (``keep`` >= 1, so the highest number stays and numbers are
  never reused: a registration claims one past the highest number in use);
* every version an alias points at, and each alias's ``previous_version``: the version
  ``rollback`` returns to. Rollback goes back one move (twice returns to where it
  started), so older history is reached only by ``promote``, which names the version: a
  history that kept everything would keep nearly every version, since a blessed version
  normally becomes production;
* every version with an unexpired read lease (``leases``: being fetched, e.g. the
  champion an evaluation is about to compare against);
* every version registered less than ``min_age_minutes`` ago (default an hour): the run
  that registered it may be about to move ``production`` to it, and a newer version of a
  concurrent run must not push it out of the newest N in between;
* numbers claimed without a manifest (a registration running now, or abandoned).

Safe with runs going on:

1. One prune per model at a time: ``prune-lock.json`` is created only if absent; one past
   its expiry, or held by a process of this host that no longer exists (a killed prune),
   is taken over by compare-and-swap on its generation.
2. A doomed version is **hidden** before anything is deleted: its manifest is copied to
   ``PRUNING.json`` and deleted, so readers stop listing it at once, never half of it.
3. Then aliases and leases are **read again**. A version an alias moved to meanwhile, or
   a reader leased meanwhile, gets its manifest back and is kept. Movers write the alias
   first and check the manifest second (``aliases.move``), readers lease first and read
   the manifest second: one side always sees the other.
4. Only then are its files deleted, ``CLAIM`` next and ``PRUNING.json`` last, so a prune
   killed midway leaves a hidden version that the next prune finishes (or gives back).

A reader that listed a version just before it was hidden may find it gone (one line
naming it); an alias record that cannot be read stops the prune, since nobody can say
which versions it needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Iterator

from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry import aliases, leases, versions
from searchtune.registry.layout import CLAIM, Layout, dumps, now

log = logging.getLogger(__name__)

LOCK_SECONDS = 3600  # a prune holding the lock longer than this is taken to be dead
MIN_AGE_MINUTES = 60  # a registering run moves production within seconds of registering


@dataclasses.dataclass
class Decision:
    """What prune does with one version: ``kept_because`` None means delete."""

    version: int
    kept_because: str | None
    files: int
    bytes: int
    hidden: bool = False  # by a prune that did not finish


@dataclasses.dataclass
class Outcome:
    """What a prune found and did for one model."""

    model: str
    keep: int
    decisions: list[Decision]
    dry_run: bool
    deleted: list[int] = dataclasses.field(default_factory=list)
    given_back: dict[int, str] = dataclasses.field(default_factory=dict)  # hidden, then needed after all
    expired_leases: int = 0

    @property
    def doomed(self) -> list[Decision]:
        return [d for d in self.decisions if d.kept_because is None]


def _needed(layout: Layout, model: str) -> dict[int, str]:
    """Versions the aliases and read leases need, with why; raises if an alias cannot be read."""
    needed: dict[int, str] = {}
    for name in aliases.names(layout, model):
        state = aliases.read(layout, model, name)
        if state.problem:
            raise aliases.unreadable(layout, model, name, state)
        previous = (state.record or {}).get("previous_version")
        if previous is not None:
            needed.setdefault(int(previous), f"rollback target of @{name}")
        if state.version is not None:
            needed[state.version] = f"@{name}"
    for version, until in leases.fresh(layout, model).items():
        needed.setdefault(version, f"being read (lease until {until:%Y-%m-%d %H:%M} UTC)")
    return needed


def _registered_minutes_ago(layout: Layout, model: str, number: int) -> float | None:
    """Minutes since the version's manifest says it was registered; None if that cannot be read."""
    try:
        manifest = versions.read_manifest(layout, model, number)
        created = _dt.datetime.fromisoformat(manifest["created_at"])
        return (_dt.datetime.now(_dt.timezone.utc) - created).total_seconds() / 60
    except (SearchtuneError, KeyError, TypeError, ValueError):
        return None


def plan(layout: Layout, model: str, keep: int, dry_run: bool = True, min_age_minutes: float = MIN_AGE_MINUTES) -> Outcome:
    """Decide, for every visible or half-pruned version, whether it is kept and why."""
    if keep < 1:
        raise SearchtuneError(f"--keep must be at least 1 (the newest version is always kept), got {keep}")
    if min_age_minutes < 0:
        raise SearchtuneError(f"--min-age must be 0 or more minutes, got {min_age_minutes}")
    listed = versions.listing(layout, model)
    _claimed, visible = versions.numbers_in_use(layout, model, listed)
    hidden = versions.numbers_being_pruned(layout, model, listed)
    needed = _needed(layout, model)
    newest = set(sorted(visible)[-keep:])
    decisions = []
    for number in sorted(visible | hidden):
        prefix = layout.version(model, number) + "/"
        sizes = [size for uri, size in listed.items() if uri.startswith(prefix)]
        why = f"newest {keep}" if number in newest else needed.get(number)
        age = _registered_minutes_ago(layout, model, number) if why is None and number in visible else None
        if age is not None and age < min_age_minutes:
            why = f"registered {age:.0f} min ago (its run may be promoting it)"
        decisions.append(Decision(number, why, len(sizes), sum(sizes), hidden=number in hidden))
    return Outcome(model, keep, decisions, dry_run)


def prune(layout: Layout, model: str, keep: int, *, dry_run: bool, actor: str,
          min_age_minutes: float = MIN_AGE_MINUTES) -> Outcome:
    """Delete the versions of ``model`` beyond the newest ``keep`` that nothing needs (see the module docstring).

    Args:
        layout: the registry's layout.
        model: the model's name.
        keep: how many of the newest versions to keep (at least 1).
        dry_run: only decide; change nothing.
        actor: who prunes (recorded in the lock while it runs).
        min_age_minutes: keep versions registered more recently than this.

    Raises:
        SearchtuneError: nothing of ``model`` is stored, ``keep`` < 1, an alias record cannot
            be read, or another prune of the model is running.
    """
    if not storage.list_prefix(layout.model(model) + "/"):
        # Taking the lock would create <root>/<model>/ for a mistyped path and report success.
        raise SearchtuneError(f"no model {model!r} in {layout.root}: nothing stored there to prune "
                              "(check the registry path and the model name)")
    if dry_run:
        return plan(layout, model, keep, min_age_minutes=min_age_minutes)
    plan(layout, model, keep, min_age_minutes=min_age_minutes)  # refuse bad input before the lock: writes nothing
    with _locked(layout, model, actor):
        outcome = plan(layout, model, keep, dry_run=False, min_age_minutes=min_age_minutes)
        for decision in outcome.decisions:
            if decision.hidden and decision.kept_because:  # hidden by a killed prune, needed since
                _give_back(layout, model, decision.version, storage.read_bytes(layout.pruning(model, decision.version)))
                outcome.given_back[decision.version] = decision.kept_because
        doomed = [d.version for d in outcome.doomed]
        saved = {number: _hide(layout, model, number) for number in doomed}
        try:
            needed = _needed(layout, model)
        except SearchtuneError:
            for number, manifest in saved.items():
                _give_back(layout, model, number, manifest)
            raise
        for number in doomed:
            if number in needed:
                _give_back(layout, model, number, saved[number])
                outcome.given_back[number] = needed[number]
            else:
                _delete(layout, model, number)
                outcome.deleted.append(number)
        for uri in leases.expired(layout, model):
            storage.delete(uri)
            outcome.expired_leases += 1
        _drop_stale_markers(layout, model)
    return outcome


def _hide(layout: Layout, model: str, number: int) -> bytes:
    """Move the manifest aside to PRUNING.json; returns its bytes (a half-pruned version keeps its copy)."""
    manifest_uri = layout.manifest(model, number)
    data, _generation = storage.read_with_generation(manifest_uri)
    if data is None:  # hidden by an earlier, interrupted prune
        return storage.read_bytes(layout.pruning(model, number))
    storage.create_bytes(layout.pruning(model, number), data)
    storage.delete(manifest_uri)
    log.debug("hid %s v%d", model, number)
    return data


def _give_back(layout: Layout, model: str, number: int, manifest: bytes) -> None:
    storage.create_bytes(layout.manifest(model, number), manifest)
    storage.delete(layout.pruning(model, number))
    log.info("%s v%d is needed after all; its manifest is back", model, number)


def _delete(layout: Layout, model: str, number: int) -> None:
    version_uri = layout.version(model, number)
    log.debug("deleting %s v%d", model, number)
    last = [storage.join(version_uri, CLAIM), layout.pruning(model, number)]
    for uri in [u for u in storage.list_prefix(version_uri) if u not in last] + last:
        storage.delete(uri)
    if not storage.is_gcs(version_uri):
        shutil.rmtree(version_uri, ignore_errors=True)  # the empty folders
    log.debug("pruned %s v%d", model, number)


def _drop_stale_markers(layout: Layout, model: str) -> None:
    """Remove PRUNING.json next to a manifest: a prune killed while giving a version back left it."""
    listed = versions.listing(layout, model)
    _claimed, visible = versions.numbers_in_use(layout, model, listed)
    for number in visible:
        if layout.pruning(model, number) in listed:
            storage.delete(layout.pruning(model, number))


@contextlib.contextmanager
def _locked(layout: Layout, model: str, actor: str) -> Iterator[None]:
    """Hold ``<model>/prune-lock.json`` while the block runs (see the module docstring)."""
    uri = layout.prune_lock(model)
    expires = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=LOCK_SECONDS)
    data = dumps({"by": actor, "host": socket.gethostname(), "pid": os.getpid(), "at": now(),
                  "expires_at": expires.isoformat(), "token": uuid.uuid4().hex})
    try:
        storage.create_bytes(uri, data)
    except storage.PreconditionFailed:
        _take_over(uri, data, model)
    try:
        yield
    finally:
        current, _generation = storage.read_with_generation(uri)
        if current == data:
            storage.delete(uri)


def _dead_here(held: dict) -> bool:
    """True if the lock was taken on this host by a process that no longer exists."""
    if held.get("host") != socket.gethostname() or type(held.get("pid")) is not int:
        return False
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, another user's
        return False
    return False


def _take_over(uri: str, data: bytes, model: str) -> None:
    """Replace a lock past its expiry (or unreadable), by compare-and-swap; else refuse."""
    raw, generation = storage.read_with_generation(uri)
    try:
        held = json.loads(raw) if raw is not None else {}
        until = _dt.datetime.fromisoformat(held["expires_at"])
    except (ValueError, KeyError, TypeError):
        held, until = {}, None
    if until is not None and until > _dt.datetime.now(_dt.timezone.utc) and not _dead_here(held):
        raise SearchtuneError(f"{uri}: another prune of '{model}' is running (by {held.get('by')} since "
                              f"{held.get('at')}); try again when it is done, or after {held['expires_at']} if it died")
    try:
        storage.write_if_generation_matches(uri, data, generation)
    except storage.PreconditionFailed:
        raise SearchtuneError(f"{uri}: another prune of '{model}' took the lock just now; try again later") from None
    log.warning("took over the prune lock of %s, left by a prune that did not finish", model)

