"""A versioned model registry on local disk or GCS, with a ``production`` alias.

Layout below the root (a local folder or ``gs://bucket/prefix``)::

    <model>/versions/<n>/CLAIM            who reserved number n (created-if-absent)
    <model>/versions/<n>/...files...      the version's files, each created-if-absent
    <model>/versions/<n>/MANIFEST.json    written LAST: every file with size + sha256, metadata
    <model>/aliases/<alias>.json          {version, previous_version, moved_at, moved_by, ...}
    <model>/aliases/history/<alias>/<seq>.json   one record per alias move, created-if-absent

Rules that make concurrent writers and crashes safe:

* **Numbers** are claimed by creating ``versions/<n>/CLAIM`` only if absent, starting one
  past the highest number anyone has claimed; on a conflict the writer tries ``n+1``. Two
  writers can never share a number and no version is overwritten.
* **Visibility**: a version exists for readers only once its ``MANIFEST.json`` exists, and
  the manifest is created last. A writer that crashes (even SIGKILL) leaves a claim and
  some files that no reader lists; its number is simply skipped. A writer that fails with
  an exception deletes what it wrote. Numbers are therefore increasing but may have gaps.
* **Alias moves** are compare-and-swap on the alias object's generation: the caller states
  which version it believes the alias points at, and the write fails with
  ``AliasConflict`` if someone moved it meanwhile.
* **Alias history**: each alias record carries a sequence number ``seq``; after a
  successful move the record is also created as ``history/<alias>/<seq>.json``. The alias
  object is the truth; if a mover dies between the two writes, the next mover (and
  ``alias_history``) writes the missing history record from the alias object itself, so
  the history has no holes and never records a move that did not happen.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import uuid

from searchtune.errors import SearchtuneError
from searchtune.io import storage

log = logging.getLogger(__name__)

DEFAULT_REGISTRY = os.environ.get("SEARCHTUNE_REGISTRY", ".searchtune/registry")
DEFAULT_MODEL_NAME = "searchtune-relevance"
PRODUCTION = "production"
MANIFEST = "MANIFEST.json"
CLAIM = "CLAIM"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION_REF = re.compile(r"^v?(\d+)$")


class AliasConflict(SearchtuneError):
    """The alias moved since the caller looked at it.

    Attributes:
        current: the alias record now in the registry (None if the alias does not exist).
    """

    def __init__(self, message: str, current: dict | None):
        super().__init__(message)
        self.current = current


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _dumps(record: dict) -> bytes:
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise SearchtuneError(f"invalid {kind} name {name!r}: use letters, digits, '.', '_' and '-'")
    return name


def default_actor() -> str:
    """``user@host`` of this process, recorded as who moved an alias or registered a version."""
    try:
        user = os.getlogin()
    except OSError:
        user = os.environ.get("USER") or str(os.getuid())
    return f"{user}@{socket.gethostname()}"


class ModelRegistry:
    """Versions of named models plus movable aliases, stored below one root.

    Args:
        root: a local folder (created on first write) or a ``gs://bucket/prefix`` URI.
    """

    def __init__(self, root: str):
        if not root:
            raise SearchtuneError("registry root is empty")
        self.root = str(root).rstrip("/") if storage.is_gcs(str(root)) else os.path.abspath(root)

    def __repr__(self) -> str:
        return f"ModelRegistry({self.root!r})"

    # ------------------------------------------------------------------ locations

    def _model_uri(self, model: str) -> str:
        return storage.join(self.root, _check_name("model", model))

    def _version_uri(self, model: str, version: int) -> str:
        return storage.join(self._model_uri(model), "versions", str(int(version)))

    def _alias_uri(self, model: str, alias: str) -> str:
        return storage.join(self._model_uri(model), "aliases", f"{_check_name('alias', alias)}.json")

    def _history_uri(self, model: str, alias: str, seq: int) -> str:
        return storage.join(self._model_uri(model), "aliases", "history", alias, f"{int(seq):08d}.json")

    def version_uri(self, model: str, version: int) -> str:
        """Where version ``version`` of ``model`` keeps its files."""
        return self._version_uri(model, version)

    # ------------------------------------------------------------------ reading versions

    def _numbers_in_use(self, model: str) -> tuple[set[int], set[int]]:
        """(every claimed number, numbers with a manifest) from one listing."""
        claimed, manifested = set(), set()
        versions_uri = storage.join(self._model_uri(model), "versions")
        for uri in storage.list_prefix(versions_uri):
            parts = storage.relative(uri, versions_uri).split("/")
            if parts[0].isdigit():
                claimed.add(int(parts[0]))
                if parts[1:] == [MANIFEST]:
                    manifested.add(int(parts[0]))
        return claimed, manifested

    def _read_manifest(self, model: str, version: int) -> dict:
        uri = storage.join(self._version_uri(model, version), MANIFEST)
        try:
            manifest = json.loads(storage.read_bytes(uri))
        except json.JSONDecodeError as error:
            raise SearchtuneError(f"{uri}: not valid JSON ({error})") from None
        manifest["uri"] = self._version_uri(model, version)
        return manifest

    def versions(self, model: str) -> list[dict]:
        """Manifests of the visible versions of ``model``, ascending by version number.

        Args:
            model: the model's name.
        """
        _claimed, manifested = self._numbers_in_use(model)
        return [self._read_manifest(model, n) for n in sorted(manifested)]

    def _describe_refs(self, model: str) -> str:
        numbers = sorted(self._numbers_in_use(model)[1])
        aliases = sorted(self._aliases(model))
        if not numbers:
            return f"model '{model}' has no versions in {self.root}"
        listed = ", ".join(f"v{n}" for n in numbers)
        return f"available: {listed}" + (f"; aliases: {', '.join(aliases)}" if aliases else "") + ", latest"

    def _aliases(self, model: str) -> list[str]:
        aliases_uri = storage.join(self._model_uri(model), "aliases")
        names = [storage.relative(u, aliases_uri) for u in storage.list_prefix(aliases_uri)]
        return [n[: -len(".json")] for n in names if "/" not in n and n.endswith(".json")]

    def resolve(self, model: str, ref: int | str) -> int:
        """The version number ``ref`` stands for: ``3``, ``"3"``, ``"v3"``, ``"latest"`` or an alias.

        Raises:
            SearchtuneError: no such version/alias; the message lists what exists.
        """
        text = str(ref).strip()
        match = _VERSION_REF.match(text)
        if match:
            number = int(match.group(1))
            if number not in self._numbers_in_use(model)[1]:
                raise SearchtuneError(f"model '{model}' has no version {number}; {self._describe_refs(model)}")
            return number
        if text == "latest":
            numbers = self._numbers_in_use(model)[1]
            if not numbers:
                raise SearchtuneError(f"model '{model}' has no versions in {self.root}")
            return max(numbers)
        if not _NAME.match(text):
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
        return self._read_manifest(model, self.resolve(model, ref))

    def production(self, model: str) -> dict | None:
        """The manifest the ``production`` alias points at, plus ``auc`` and ``alias``; None if unset.

        ``auc`` is the candidate AUC recorded at registration (manifest metadata), read from
        the version's ``blessing.json`` / ``evaluation.json`` when the metadata lacks it.
        """
        record = self.alias(model, PRODUCTION)
        if record is None:
            return None
        manifest = self._read_manifest(model, int(record["version"]))
        return {**manifest, "auc": self._auc_of(manifest), "alias": record}

    def _auc_of(self, manifest: dict) -> float | None:
        auc = (manifest.get("metadata") or {}).get("auc")
        if auc is not None:
            return float(auc)
        names = {f["path"] for f in manifest.get("files", [])}
        for name, path in (("blessing.json", ("candidate", "auc")), ("evaluation.json", ("candidate", "roc_auc"))):
            if name in names:
                value = json.loads(storage.read_bytes(storage.join(manifest["uri"], name)))
                for key in path:
                    value = value.get(key) if isinstance(value, dict) else None
                if value is not None:
                    return float(value)
        return None

    def read_file(self, model: str, ref: int | str, path: str) -> bytes:
        """The bytes of one file of a version (e.g. ``"evaluation.json"``), checked against the manifest."""
        manifest = self.version(model, ref)
        entry = next((f for f in manifest["files"] if f["path"] == path), None)
        if entry is None:
            raise SearchtuneError(f"v{manifest['version']} of '{model}' has no file {path}")
        data = storage.read_bytes(storage.join(manifest["uri"], path))
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise SearchtuneError(f"{storage.join(manifest['uri'], path)}: sha256 does not match the manifest")
        return data

    def models(self) -> list[str]:
        """Names of the models that have at least one visible version."""
        names = set()
        for uri in storage.list_prefix(self.root):
            parts = storage.relative(uri, self.root).split("/")
            if len(parts) == 4 and parts[1] == "versions" and parts[3] == MANIFEST and _NAME.match(parts[0]):
                names.add(parts[0])
        return sorted(names)

    # ------------------------------------------------------------------ fetching

    def fetch(self, model: str, ref: int | str, dest: str) -> str:
        """Download a version's files into the local folder ``dest`` and verify every checksum.

        The files are gathered in a temporary folder next to ``dest`` and renamed into
        place only when all sizes and SHA-256 sums match the manifest, so ``dest`` is
        either complete or not there. ``dest`` must not exist or be an empty folder.
        The manifest is saved as ``dest/MANIFEST.json``.

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
        manifest = self.version(model, ref)
        parent = os.path.dirname(os.path.abspath(dest))
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".fetch-", dir=parent)
        try:
            for entry in manifest["files"]:
                source = storage.join(manifest["uri"], entry["path"])
                target = os.path.join(staging, *entry["path"].split("/"))
                storage.download(source, target)
                size, digest = os.path.getsize(target), _sha256(target)
                if size != entry["size"] or digest != entry["sha256"]:
                    raise SearchtuneError(
                        f"{source}: checksum mismatch (manifest: {entry['size']} bytes sha256 "
                        f"{entry['sha256'][:12]}…, got {size} bytes sha256 {digest[:12]}…)"
                    )
            saved = {k: v for k, v in manifest.items() if k != "uri"}
            with open(os.path.join(staging, MANIFEST), "wb") as handle:
                handle.write(_dumps(saved))
            if os.path.isdir(dest):
                os.rmdir(dest)
            os.replace(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("fetched %s v%d (%d files) to %s", model, manifest["version"], len(manifest["files"]), dest)
        return dest

    # ------------------------------------------------------------------ registering

    def _claim(self, model: str, created_by: str, run_id: str) -> tuple[int, bytes]:
        claimed, _ = self._numbers_in_use(model)
        number = max(claimed, default=0) + 1
        for _ in range(1000):
            claim = _dumps({"claimed_at": _now(), "created_by": created_by, "run_id": run_id,
                            "host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex})
            try:
                storage.create_bytes(storage.join(self._version_uri(model, number), CLAIM), claim)
                return number, claim
            except storage.PreconditionFailed:
                log.info("version %d of %s was claimed by another writer; trying %d", number, model, number + 1)
                number += 1
        raise SearchtuneError(f"could not claim a version number for '{model}' after 1000 tries")

    def register_version(self, model: str, files_dir: str, metadata: dict) -> dict:
        """Add a new version holding every file below the local folder ``files_dir``.

        Claims the next number, uploads each file (create-if-absent), then creates the
        manifest. If anything fails before the manifest exists, the files written so far
        are deleted again and the error is raised.

        Args:
            model: the model's name.
            files_dir: local folder with the version's files (sub-folders kept).
            metadata: JSON-serialisable facts about the version; ``run_id`` and
                ``created_by`` are also copied to the manifest's top level.

        Returns:
            The manifest (with ``uri``, the version's location).
        """
        _check_name("model", model)
        if not os.path.isdir(files_dir):
            raise SearchtuneError(f"{files_dir}: not a folder")
        files = []
        for path in storage.list_prefix(files_dir):
            rel = storage.relative(path, files_dir)
            if rel in (MANIFEST, CLAIM):
                raise SearchtuneError(f"{path}: '{rel}' is a name the registry reserves")
            files.append({"path": rel, "size": os.path.getsize(path), "sha256": _sha256(path)})
        if not files:
            raise SearchtuneError(f"{files_dir}: no files to register")
        created_by = str(metadata.get("created_by") or default_actor())
        run_id = str(metadata.get("run_id") or "")
        number, _ = self._claim(model, created_by, run_id)
        version_uri = self._version_uri(model, number)
        total = sum(f["size"] for f in files)
        log.info("registering %s v%d: %d files, %.1f MB -> %s", model, number, len(files), total / 1e6, version_uri)
        written = [storage.join(version_uri, CLAIM)]
        try:
            for index, entry in enumerate(files, 1):
                target = storage.join(version_uri, entry["path"])
                log.debug("uploading %s (%d/%d, %d bytes)", entry["path"], index, len(files), entry["size"])
                storage.create_file(os.path.join(files_dir, *entry["path"].split("/")), target)
                written.append(target)
            manifest = {
                "format": 1,
                "model": model,
                "version": number,
                "created_at": _now(),
                "created_by": created_by,
                "run_id": run_id,
                "files": files,
                "metadata": metadata,
            }
            storage.create_bytes(storage.join(version_uri, MANIFEST), _dumps(manifest))
        except BaseException:
            log.error("registering %s v%d failed; removing the %d object(s) written", model, number, len(written))
            self._discard(version_uri, written)
            raise
        log.info("registered %s v%d (%d files) at %s", model, number, len(files), version_uri)
        return {**manifest, "uri": version_uri}

    def _discard(self, version_uri: str, written: list[str]) -> None:
        for uri in reversed(written):  # CLAIM last, so the number stays reserved until the end
            try:
                storage.delete(uri)
            except SearchtuneError as error:
                log.warning("could not remove %s: %s", uri, error)
        if not storage.is_gcs(version_uri):
            shutil.rmtree(version_uri, ignore_errors=True)

    # ------------------------------------------------------------------ aliases

    def _read_alias(self, model: str, alias: str) -> tuple[dict | None, bytes | None, storage.Generation | None]:
        uri = self._alias_uri(model, alias)
        data, generation = storage.read_with_generation(uri)
        if data is None:
            return None, None, None
        try:
            return json.loads(data), data, generation
        except json.JSONDecodeError as error:
            raise SearchtuneError(f"{uri}: not valid JSON ({error})") from None

    def alias(self, model: str, alias: str = PRODUCTION) -> dict | None:
        """The alias record ``{version, previous_version, moved_at, moved_by, run_id, reason, seq}`` or None."""
        return self._read_alias(model, alias)[0]

    def _record_history(self, model: str, alias: str, record: dict) -> None:
        """Create history/<alias>/<seq>.json from an alias record (no-op if already there)."""
        try:
            storage.create_bytes(self._history_uri(model, alias, record["seq"]), _dumps(record))
        except storage.PreconditionFailed:
            existing = json.loads(storage.read_bytes(self._history_uri(model, alias, record["seq"])))
            if existing != record:
                log.warning("alias history %s/%s #%d differs from the alias record", model, alias, record["seq"])

    def move_alias(self, model: str, version: int, *, expected: int | None, actor: str, reason: str,
                   run_id: str = "", alias: str = PRODUCTION) -> dict:
        """Point ``alias`` at ``version`` if it still points at ``expected`` (compare-and-swap).

        Args:
            model: the model's name.
            version: the version to point at; it must be visible.
            expected: the version the caller believes the alias points at now; None when
                it believes there is no such alias yet.
            actor: who moves it (recorded).
            reason: why (recorded).
            run_id: the pipeline run that moves it, if any (recorded).
            alias: the alias name.

        Returns:
            The new alias record.

        Raises:
            AliasConflict: the alias points elsewhere than ``expected``; ``.current`` says where.
            SearchtuneError: the version does not exist or the alias already points at it.
        """
        version = self.resolve(model, version)
        current, _raw, generation = self._read_alias(model, alias)
        if current is not None:
            self._record_history(model, alias, current)  # repair a mover that died before writing it
        current_version = None if current is None else int(current["version"])
        if current_version != expected:
            raise AliasConflict(
                f"{model}@{alias} points at {_v(current_version)}, not {_v(expected)} as expected; "
                "it was moved by someone else", current)
        if current_version == version:
            raise SearchtuneError(f"{model}@{alias} already points at v{version}")
        record = {
            "alias": alias,
            "model": model,
            "version": version,
            "previous_version": current_version,
            "moved_at": _now(),
            "moved_by": actor,
            "run_id": run_id,
            "reason": reason,
            "seq": (current or {}).get("seq", 0) + 1,
        }
        data = _dumps(record)
        try:
            storage.write_if_generation_matches(self._alias_uri(model, alias), data, generation)
        except storage.PreconditionFailed:
            now, now_raw, _ = self._read_alias(model, alias)
            if now_raw != data:  # unless a retried request of ours is what landed
                moved_to = None if now is None else int(now["version"])
                raise AliasConflict(f"{model}@{alias} moved to {_v(moved_to)} while being moved to v{version}",
                                    now) from None
        self._record_history(model, alias, record)
        log.info("%s@%s: %s -> v%d by %s (%s)", model, alias, _v(current_version), version, actor, reason)
        return record

    def promote(self, model: str, version: int | str, actor: str, reason: str, run_id: str = "") -> dict:
        """Point ``production`` at ``version``, whatever it points at now (still compare-and-swap).

        Args:
            model: the model's name.
            version: version number or ref (``"v3"``, ``"latest"``).
            actor: who promotes (recorded).
            reason: why (recorded).
            run_id: the pipeline run, if any.
        """
        current = self.alias(model, PRODUCTION)
        expected = None if current is None else int(current["version"])
        return self.move_alias(model, self.resolve(model, version), expected=expected, actor=actor,
                               reason=reason, run_id=run_id)

    def rollback(self, model: str, actor: str, reason: str) -> dict:
        """Point ``production`` back at the version it pointed at before its last move.

        Rolling back twice returns to where it started (like ``kubectl rollout undo``);
        use ``promote`` to choose any version.

        Args:
            model: the model's name.
            actor: who rolls back (recorded).
            reason: why (recorded).
        """
        current = self.alias(model, PRODUCTION)
        if current is None:
            raise SearchtuneError(f"model '{model}' has no production alias to roll back")
        previous = current.get("previous_version")
        if previous is None:
            raise SearchtuneError(f"{model}@production (v{current['version']}) has no earlier target to roll back to")
        return self.move_alias(model, int(previous), expected=int(current["version"]), actor=actor,
                               reason=reason or "rollback")

    def alias_history(self, model: str, alias: str = PRODUCTION) -> list[dict]:
        """Every move of ``alias``, oldest first (including the current record)."""
        history_uri = storage.join(self._model_uri(model), "aliases", "history", _check_name("alias", alias))
        records = {}
        for uri in storage.list_prefix(history_uri):
            record = json.loads(storage.read_bytes(uri))
            records[int(record["seq"])] = record
        current = self.alias(model, alias)
        if current is not None:
            records.setdefault(int(current["seq"]), current)
        return [records[seq] for seq in sorted(records)]


def _v(version: int | None) -> str:
    return "nothing" if version is None else f"v{version}"
