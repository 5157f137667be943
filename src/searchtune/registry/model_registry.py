"""``ModelRegistry``: versioned models with movable aliases, on local disk or GCS.

The class is the registry's one entry point; the work is done by the modules next to it:
``layout`` (where things are), ``versions`` (claim, register, fetch: visible only once the
manifest is written last), ``aliases`` (compare-and-swap moves, history, repair of an
unreadable record), ``candidates`` (the log of blessed and refused candidates),
``verify`` (checksums, manifests, aliases), ``probe`` (is the root usable at all),
``leases`` (a version being read), ``retention`` (prune) and ``cleanup`` (killed writers' files).
Their docstrings state the guarantees. This module runs past 300 lines because it is the
registry's documented public surface: most of it is the methods' docstrings, each method
a few lines handing over to one of those modules.
"""

from __future__ import annotations

import logging
import os

from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry import aliases, candidates, cleanup, leases, probe, retention, versions
from searchtune.registry import verify as verification
from searchtune.registry.layout import NAME, PRODUCTION, VERSION_REF, Layout, check_name

log = logging.getLogger(__name__)


class ModelRegistry:
    """Versions of named models plus movable aliases, stored below one root.

    Args:
        root: a local folder (created on first write) or a ``gs://bucket/prefix`` URI.
    """

    def __init__(self, root: str):
        self.layout = Layout(root)
        self.root = self.layout.root

    def __repr__(self) -> str:
        return f"ModelRegistry({self.root!r})"

    def version_uri(self, model: str, version: int) -> str:
        """Where version ``version`` of ``model`` keeps its files."""
        return self.layout.version(model, version)

    # ------------------------------------------------------------------ reading versions

    def versions(self, model: str) -> list[dict]:
        """Manifests of the visible versions of ``model``, ascending by version number.

        A version pruned between the listing and the reading of its manifest is left out.

        Raises:
            SearchtuneError: a manifest cannot be read (naming it; ``verify`` says more).
        """
        _claimed, visible = versions.numbers_in_use(self.layout, model)
        found = []
        for number in sorted(visible):
            try:
                found.append(versions.read_manifest(self.layout, model, number))
            except storage.Missing:
                log.info("%s v%d was pruned while being listed", model, number)
        return found

    def version_health(self, model: str) -> list[dict]:
        """Every visible version with the problems a cheap check finds, ascending.

        The check costs one listing plus the manifests: each manifest must parse and each
        file it lists must exist with the listed size. Content (SHA-256) is checked only by
        ``verify`` and on ``fetch``.

        Returns:
            ``[{"version": n, "manifest": dict or None, "problems": [str, ...]}, ...]``.
        """
        listed = versions.listing(self.layout, model)
        _claimed, visible = versions.numbers_in_use(self.layout, model, listed)
        health = []
        for number in sorted(visible):
            try:
                manifest = versions.read_manifest(self.layout, model, number)
            except storage.Missing:
                continue  # pruned since the listing
            except SearchtuneError as error:
                health.append({"version": number, "manifest": None, "problems": [str(error)]})
                continue
            health.append({"version": number, "manifest": manifest,
                           "problems": versions.missing_or_resized(manifest, listed)})
        return health

    def _describe_refs(self, model: str) -> str:
        numbers = sorted(versions.numbers_in_use(self.layout, model)[1])
        names = aliases.names(self.layout, model)
        if not numbers:
            return f"model '{model}' has no versions in {self.root}"
        listed = ", ".join(f"v{n}" for n in numbers)
        return f"available: {listed}" + (f"; aliases: {', '.join(names)}" if names else "") + ", latest"

    def resolve(self, model: str, ref: int | str) -> int:
        """The version number ``ref`` stands for: ``3``, ``"3"``, ``"v3"``, ``"latest"`` or an alias.

        Raises:
            SearchtuneError: no such version/alias (the message lists what exists), or the
                alias record cannot be read (the message says how to repair it).
        """
        text = str(ref).strip()
        match = VERSION_REF.match(text)
        if match:
            number = int(match.group(1))
            if number not in versions.numbers_in_use(self.layout, model)[1]:
                raise SearchtuneError(f"model '{model}' has no version {number}; {self._describe_refs(model)}")
            return number
        if text == "latest":
            numbers = versions.numbers_in_use(self.layout, model)[1]
            if not numbers:
                raise SearchtuneError(f"model '{model}' has no versions in {self.root}")
            return max(numbers)
        if not NAME.match(text):
            raise SearchtuneError(f"'{text}' is not a version (3, v3), 'latest' or an alias name")
        record = self.alias(model, text)
        if record is None:
            raise SearchtuneError(f"model '{model}' has no alias '{text}'; {self._describe_refs(model)}")
        return int(record["version"])

    def version(self, model: str, ref: int | str) -> dict:
        """The manifest of one version.

        Args:
            model: the model's name.
            ref: ``3``, ``"3"``, ``"v3"``, ``"production"`` (or any alias), ``"latest"``.

        Raises:
            SearchtuneError: unknown ref; the message lists the versions and aliases that exist.
        """
        return versions.read_manifest(self.layout, model, self.resolve(model, ref))

    def production(self, model: str) -> dict | None:
        """The manifest the ``production`` alias points at, plus ``auc`` and ``alias``; None if unset.

        ``auc`` is the candidate AUC recorded at registration (manifest metadata), read from
        the version's ``blessing.json`` / ``evaluation.json`` when the metadata lacks it.
        """
        record = self.alias(model, PRODUCTION)
        if record is None:
            return None
        manifest = versions.read_manifest(self.layout, model, int(record["version"]))
        return {**manifest, "auc": versions.auc_of(manifest), "alias": record}

    def read_file(self, model: str, ref: int | str, path: str) -> bytes:
        """The bytes of one file of a version (e.g. ``"evaluation.json"``), checked against the manifest."""
        return versions.read_checked(self.version(model, ref), path)

    def models(self, stored: bool = False) -> list[str]:
        """Names of the models that have at least one visible version.

        Args:
            stored: also models with only claims or aliases left (e.g. ``production``
                pointing at a version that is gone): what ``verify`` must look at.
        """
        return versions.model_names(self.layout, stored)

    def fetch(self, model: str, ref: int | str, dest: str) -> str:
        """Download a version's files into the local folder ``dest`` and verify every checksum.

        ``dest`` is either complete or not there (see ``versions.fetch``); it must not
        exist or be an empty folder. A read lease (``leases``) keeps ``prune`` from deleting
        the version meanwhile.

        Args:
            model: the model's name.
            ref: version number, ``"latest"`` or an alias.
            dest: local folder to create.

        Returns:
            ``dest``.

        Raises:
            SearchtuneError: a file's size or SHA-256 differs from the manifest (naming it),
                or ``dest`` is a non-empty folder.
        """
        if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
            raise SearchtuneError(f"{dest}: already exists and is not an empty folder")
        number = self.resolve(model, ref)
        with leases.held(self.layout, model, number, purpose=f"fetch to {os.path.abspath(dest)}"):
            try:  # the manifest is read after the lease exists: a prune sees one or we see it gone
                manifest = versions.read_manifest(self.layout, model, number)
            except storage.Missing:
                raise SearchtuneError(f"model '{model}' has no version {number} any more (pruned just now); "
                                      f"{self._describe_refs(model)}") from None
            versions.fetch(manifest, dest)
        log.info("fetched %s v%d (%d files) to %s", model, manifest["version"], len(manifest["files"]), dest)
        return dest

    # ------------------------------------------------------------------ writing versions

    def register_version(self, model: str, files_dir: str, metadata: dict) -> dict:
        """Add a new version holding every file below the local folder ``files_dir``.

        See ``versions.register``: the number is claimed, the files created, the manifest
        written last; on failure what was written is removed again.

        Args:
            model: the model's name.
            files_dir: local folder with the version's files (sub-folders kept).
            metadata: JSON-serialisable facts; ``run_id`` and ``created_by`` also go to the
                manifest's top level.

        Returns:
            The manifest (with ``uri``, the version's location).
        """
        return versions.register(self.layout, model, files_dir, metadata)

    # ------------------------------------------------------------------ aliases

    def alias(self, model: str, alias: str = PRODUCTION) -> dict | None:
        """The alias record ``{version, previous_version, moved_at, moved_by, run_id, reason, seq}`` or None.

        Args:
            model: the model's name.
            alias: the alias name.

        Raises:
            SearchtuneError: the alias object exists but cannot be read (says how to repair).
        """
        state = aliases.read(self.layout, model, alias)
        if state.problem:
            raise aliases.unreadable(self.layout, model, alias, state)
        return state.record

    def move_alias(self, model: str, version: int, *, expected: int | None, actor: str, reason: str,
                   run_id: str = "", alias: str = PRODUCTION, repair: bool = False) -> dict:
        """Point ``alias`` at ``version`` if it still points at ``expected`` (compare-and-swap).

        Args:
            model: the model's name.
            version: the version to point at; it must be visible.
            expected: the version the caller believes the alias points at now; None when it
                believes there is no such alias yet.
            actor: who moves it (recorded).
            reason: why (recorded).
            run_id: the pipeline run that moves it, if any (recorded).
            alias: the alias name.
            repair: replace an unreadable alias record (``expected`` is then not compared).

        Returns:
            The new alias record.

        Raises:
            AliasConflict: the alias points elsewhere than ``expected``; ``.current`` says where.
            SearchtuneError: the version does not exist, the alias already points at it, or
                the alias record cannot be read and ``repair`` is not set.
        """
        version = self.resolve(model, version)
        state = aliases.read(self.layout, model, alias)
        return aliases.move(self.layout, model, alias, state, version, expected=expected, actor=actor, reason=reason,
                            run_id=run_id, repair=repair)

    def promote(self, model: str, version: int | str, actor: str, reason: str, run_id: str = "",
                repair: bool = False) -> dict:
        """Point ``production`` at ``version``, whatever it points at now (still compare-and-swap).

        Args:
            model: the model's name.
            version: version number or ref (``"v3"``, ``"latest"``).
            actor: who promotes (recorded).
            reason: why (recorded).
            run_id: the pipeline run, if any.
            repair: replace the alias record even if it cannot be read (history is kept).
        """
        state = aliases.read(self.layout, model, PRODUCTION)
        self._refuse_if_nothing_left(model, state)
        if state.problem and not repair:
            raise aliases.unreadable(self.layout, model, PRODUCTION, state)
        return aliases.move(self.layout, model, PRODUCTION, state, self.resolve(model, version), expected=state.version,
                            actor=actor, reason=reason, run_id=run_id, repair=repair)

    def clear_production(self, model: str, actor: str, reason: str) -> dict:
        """Remove a ``production`` alias that points nowhere, on a model that has no version left.

        See ``aliases.clear``: the way out when nothing exists to promote; the next run starts
        as a first run. Returns the history record of the removal.
        """
        state = aliases.read(self.layout, model, PRODUCTION)
        visible = versions.numbers_in_use(self.layout, model)[1]
        if state.record is not None and state.version in visible:
            raise SearchtuneError(f"{model}@production points at v{state.version}, which exists; nothing to repair")
        return aliases.clear(self.layout, model, PRODUCTION, state, visible, actor=actor, reason=reason)

    def _refuse_if_nothing_left(self, model: str, state: aliases.AliasState) -> None:
        """Raise the how-to-start-again line if ``production`` is broken and no version exists."""
        if state.raw is None or (state.record is not None and storage.exists(self.layout.manifest(model, state.version))):
            return  # absent, or pointing at a version that exists: nothing wedged (no listing needed)
        if versions.numbers_in_use(self.layout, model)[1]:
            return
        what = (f"alias record cannot be read ({state.problem})" if state.problem
                else f"points at v{state.version}, which has no manifest")
        raise aliases.no_version_left(self.layout, model, PRODUCTION, what)

    def rollback(self, model: str, actor: str, reason: str, repair: bool = False) -> dict:
        """Point ``production`` back at the version it pointed at before its last move.

        Rolling back twice returns to where it started (like ``kubectl rollout undo``); use
        ``promote`` to choose any version. With ``repair``, an unreadable alias record is
        replaced, and the target comes from the last readable history record.

        Args:
            model: the model's name.
            actor: who rolls back (recorded).
            reason: why (recorded).
            repair: allow replacing an unreadable alias record.
        """
        state = aliases.read(self.layout, model, PRODUCTION)
        self._refuse_if_nothing_left(model, state)
        if state.problem and not repair:
            raise aliases.unreadable(self.layout, model, PRODUCTION, state)
        target, expected = aliases.rollback_target(self.layout, model, PRODUCTION, state)
        return aliases.move(self.layout, model, PRODUCTION, state, self.resolve(model, target), expected=expected,
                            actor=actor, reason=reason or "rollback", repair=repair)

    def alias_history(self, model: str, alias: str = PRODUCTION) -> list[dict]:
        """Every move of ``alias``, oldest first (including the current record when readable)."""
        return aliases.history(self.layout, model, check_name("alias", alias))

    # ------------------------------------------------------------------ checks and the candidates log

    def check_writable(self, model: str | None = None) -> None:
        """Raise a one-line error unless the root can be listed, written, read and cleaned up.

        Leaves nothing behind that a reader sees (see ``probe``).

        Args:
            model: if given, also require its aliases to be readable and to point at
                existing versions (what evaluation and registration rely on).

        Raises:
            SearchtuneError: one line naming the root (bucket), what failed and what to fix.
        """
        probe.check_writable(self.layout, model)

    def check_production(self, model: str) -> dict | None:
        """The production manifest after a cheap check of its files; None if there is no production.

        One listing of the version plus its manifest: every file must be there with the
        size the manifest gives (content is checked by ``verify`` and ``fetch``).

        Raises:
            SearchtuneError: one line naming the alias or version, what is wrong and the
                command that fixes it.
        """
        return probe.check_production(self.layout, model)

    def verify(self, model: str, ref: int | str | None = None) -> verification.Report:
        """Check every visible version and alias of ``model`` (or one ref), reading every byte.

        Args:
            model: the model's name.
            ref: None for everything; a version (``3``, ``"v3"``, ``"latest"``) checks that
                version; an alias checks the alias, its history and the version it points at.

        Raises:
            SearchtuneError: ``ref`` names no version or alias.
        """
        if ref is None:
            return verification.verify(self.layout, model)
        text = str(ref).strip()
        if VERSION_REF.match(text) or text == "latest":
            return verification.verify(self.layout, model, [self.resolve(model, text)], [])
        state = aliases.read(self.layout, model, text)
        if state.raw is None:
            raise SearchtuneError(f"model '{model}' has no alias '{text}'; {self._describe_refs(model)}")
        visible = versions.numbers_in_use(self.layout, model)[1]
        return verification.verify(self.layout, model, [state.version] if state.version in visible else [], [text])

    def prune(self, model: str, keep: int, *, dry_run: bool, actor: str,
              min_age_minutes: float = retention.MIN_AGE_MINUTES) -> retention.Outcome:
        """Delete versions beyond the newest ``keep`` that no alias, rollback, reader or registering run needs.

        See ``retention`` for what is kept and why it is safe while runs go on.
        """
        return retention.prune(self.layout, model, keep, dry_run=dry_run, actor=actor, min_age_minutes=min_age_minutes)

    def remove_leftovers(self, models: list[str] | None = None) -> tuple[list[cleanup.Leftover], list[cleanup.Leftover]]:
        """(removed, kept): temporary files killed writers left below these models (None: the root); see ``cleanup``.

        Kept are those changed too recently to rule out a write in progress.
        """
        found = cleanup.find(self.layout, models)
        removed = cleanup.remove(found)
        return removed, [leftover for leftover in found if leftover not in removed]

    def record_candidate(self, model: str, record: dict) -> dict:
        """Append a blessed or refused candidate to ``<model>/candidates/`` (never overwrites).

        Args:
            model: the model's name.
            record: needs ``run_id`` (str) and ``blessed`` (bool); ``created_at``,
                ``reason``, ``gate_metric``, ``value``, ``low``, ``high`` are shown by
                ``searchtune models candidates`` when present.

        Returns:
            The stored record plus ``uri``.
        """
        return candidates.record(self.layout, check_name("model", model), record)

    def candidates(self, model: str, limit: int | None = 20) -> list[dict]:
        """The newest ``limit`` candidate records of ``model`` (all when None), newest first."""
        return candidates.read(self.layout, model, limit)
