"""Versions: claim a number, register files, read manifests, fetch and check files.

Rules that make concurrent writers and crashes safe:

* **Numbers** are claimed by creating ``versions/<n>/CLAIM`` only if absent, starting one
  past the highest number anyone has claimed; on a conflict the writer tries ``n+1``. Two
  writers can never share a number and no version is overwritten.
* **Visibility**: a version exists for readers only once its ``MANIFEST.json`` exists, and
  the manifest is created last. A writer that crashes (even SIGKILL) leaves a claim and
  some files that no reader lists; its number is simply skipped. A writer that fails with
  an exception deletes what it wrote. Numbers are therefore increasing but may have gaps.

Longer than 300 lines because claiming, writing, reading and fetching rely on the same
ordering rules above; they are kept in one module so those rules are checked in one place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import uuid

from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry.layout import (
    CLAIM,
    MANIFEST,
    NAME,
    PRUNING,
    Layout,
    check_name,
    default_actor,
    dumps,
    now,
    sha256_file,
)

log = logging.getLogger(__name__)


def listing(layout: Layout, model: str) -> dict[str, int]:
    """Every object below ``<model>/versions/`` with its size (one list request)."""
    return storage.list_sizes(layout.versions(model))


def numbers_in_use(layout: Layout, model: str, listed: dict[str, int] | None = None) -> tuple[set[int], set[int]]:
    """(every claimed number, numbers with a manifest), from one listing.

    Args:
        layout: the registry's layout.
        model: the model's name.
        listed: a listing already made by ``listing``; made here when None.
    """
    versions_uri = layout.versions(model)
    claimed, manifested = set(), set()
    for uri in listing(layout, model) if listed is None else listed:
        parts = storage.relative(uri, versions_uri).split("/")
        if parts[0].isdigit():
            claimed.add(int(parts[0]))
            if parts[1:] == [MANIFEST]:
                manifested.add(int(parts[0]))
    return claimed, manifested


def numbers_being_pruned(layout: Layout, model: str, listed: dict[str, int]) -> set[int]:
    """Numbers a prune has hidden (``PRUNING.json``, no manifest): the next prune finishes them."""
    versions_uri = layout.versions(model)
    hidden, manifested = set(), set()
    for uri in listed:
        parts = storage.relative(uri, versions_uri).split("/")
        if parts[0].isdigit() and parts[1:] == [PRUNING]:
            hidden.add(int(parts[0]))
        elif parts[0].isdigit() and parts[1:] == [MANIFEST]:
            manifested.add(int(parts[0]))
    return hidden - manifested


def read_manifest(layout: Layout, model: str, version: int) -> dict:
    """The manifest of a visible version, plus ``uri`` (the version's location).

    Raises:
        SearchtuneError: the manifest is missing or is not a JSON object (naming it).
    """
    uri = layout.manifest(model, version)
    try:
        manifest = json.loads(storage.read_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SearchtuneError(f"{uri}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise SearchtuneError(f"{uri}: not a registry manifest (no 'files' list)")
    manifest["uri"] = layout.version(model, version)
    return manifest


def malformed_entries(manifest: dict) -> list[str]:
    """Problems with the manifest's file entries themselves (each needs path, size, sha256)."""
    problems = []
    for index, entry in enumerate(manifest["files"]):
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str) and type(entry.get("size")) is int
                and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64):
            problems.append(f"manifest file entry {index} is malformed: {json.dumps(entry, default=str)[:80]}")
    return problems


def missing_or_resized(manifest: dict, listed: dict[str, int]) -> list[str]:
    """Problems seen by comparing a manifest with a listing: files missing or of another size.

    This is the cheap check (no bytes read); ``hash_object`` checks content.
    """
    problems = malformed_entries(manifest)
    if problems:
        return problems
    for entry in manifest["files"]:
        uri = storage.join(manifest["uri"], entry["path"])
        if uri not in listed:
            problems.append(f"{entry['path']}: missing")
        elif listed[uri] != entry["size"]:
            problems.append(f"{entry['path']}: {listed[uri]} bytes, manifest says {entry['size']}")
    return problems


class _HashingSink:
    """A write-only file object that counts and hashes what it is given."""

    def __init__(self):
        self.digest, self.size = hashlib.sha256(), 0

    def write(self, block: bytes) -> int:
        self.digest.update(block)
        self.size += len(block)
        return len(block)


def hash_object(uri: str) -> tuple[int, str]:
    """(size, sha256 hex) of a file/object, streamed without keeping it in memory."""
    sink = _HashingSink()
    storage.read_into(uri, sink)
    return sink.size, sink.digest.hexdigest()


def model_names(layout: Layout, stored: bool = False) -> list[str]:
    """Names of the models that have at least one visible version (one listing of the root).

    Args:
        layout: the registry's layout.
        stored: also the models that have anything below ``versions/`` or ``aliases/``
            (e.g. an alias left pointing at versions that are all gone).
    """
    names = set()
    for uri in storage.list_prefix(layout.root):
        parts = storage.relative(uri, layout.root).split("/")
        if len(parts) < 3 or not NAME.match(parts[0]):
            continue
        if (len(parts) == 4 and parts[1] == "versions" and parts[3] == MANIFEST) or (
                stored and parts[1] in ("versions", "aliases")):
            names.add(parts[0])
    return sorted(names)


def auc_of(manifest: dict) -> float | None:
    """The candidate's gate metric recorded at registration (``steps.register.gate_metadata``)."""
    auc = (manifest.get("metadata") or {}).get("auc")
    return None if auc is None else float(auc)


def read_checked(manifest: dict, path: str) -> bytes:
    """The bytes of one file of a version, checked against the manifest's SHA-256."""
    entry = next((f for f in manifest["files"] if f["path"] == path), None)
    if entry is None:
        raise SearchtuneError(f"v{manifest['version']} of '{manifest.get('model')}' has no file {path}")
    uri = storage.join(manifest["uri"], path)
    data = storage.read_bytes(uri)
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise SearchtuneError(f"{uri}: sha256 does not match the manifest")
    return data


# ---------------------------------------------------------------------------- fetching


def fetch(manifest: dict, dest: str) -> str:
    """Download a version's files into the local folder ``dest`` and verify every checksum.

    The files are gathered in a temporary folder next to ``dest`` and renamed into place
    only when all sizes and SHA-256 sums match the manifest, so ``dest`` is either complete
    or not there. ``dest`` must not exist or be an empty folder. The manifest is saved as
    ``dest/MANIFEST.json``.

    Args:
        manifest: the version's manifest (``read_manifest``).
        dest: local folder to create.

    Returns:
        ``dest``.

    Raises:
        SearchtuneError: a file's size or SHA-256 differs from the manifest (naming it).
    """
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".fetch-", dir=parent)
    try:
        for entry in manifest["files"]:
            source = storage.join(manifest["uri"], entry["path"])
            target = os.path.join(staging, *entry["path"].split("/"))
            storage.download(source, target)
            size, digest = os.path.getsize(target), sha256_file(target)
            if size != entry["size"] or digest != entry["sha256"]:
                raise SearchtuneError(
                    f"{source}: checksum mismatch (manifest: {entry['size']} bytes sha256 "
                    f"{entry['sha256'][:12]}…, got {size} bytes sha256 {digest[:12]}…)"
                )
        saved = {k: value for k, value in manifest.items() if k != "uri"}
        with open(os.path.join(staging, MANIFEST), "wb") as handle:
            handle.write(dumps(saved))
        if os.path.isdir(dest):
            os.rmdir(dest)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


# ---------------------------------------------------------------------------- registering


def _claim(layout: Layout, model: str, created_by: str, run_id: str) -> int:
    claimed, _ = numbers_in_use(layout, model)
    number = max(claimed, default=0) + 1
    for _ in range(1000):
        claim = dumps({"claimed_at": now(), "created_by": created_by, "run_id": run_id,
                       "host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex})
        try:
            storage.create_bytes(storage.join(layout.version(model, number), CLAIM), claim)
            return number
        except storage.PreconditionFailed:
            log.info("version %d of %s was claimed by another writer; trying %d", number, model, number + 1)
            number += 1
    raise SearchtuneError(f"could not claim a version number for '{model}' after 1000 tries")


def _describe_files(files_dir: str) -> list[dict]:
    if not os.path.isdir(files_dir):
        raise SearchtuneError(f"{files_dir}: not a folder")
    files = []
    for path in storage.list_prefix(files_dir):
        rel = storage.relative(path, files_dir)
        if rel in (MANIFEST, CLAIM, PRUNING):
            raise SearchtuneError(f"{path}: '{rel}' is a name the registry reserves")
        files.append({"path": rel, "size": os.path.getsize(path), "sha256": sha256_file(path)})
    if not files:
        raise SearchtuneError(f"{files_dir}: no files to register")
    return files


def register(layout: Layout, model: str, files_dir: str, metadata: dict) -> dict:
    """Add a new version holding every file below the local folder ``files_dir``.

    Claims the next number, uploads each file (create-if-absent), then creates the
    manifest. If anything fails before the manifest exists, the files written so far are
    deleted again and the error is raised.

    Args:
        layout: the registry's layout.
        model: the model's name.
        files_dir: local folder with the version's files (sub-folders kept).
        metadata: JSON-serialisable facts about the version; ``run_id`` and ``created_by``
            are also copied to the manifest's top level.

    Returns:
        The manifest (with ``uri``, the version's location).
    """
    check_name("model", model)
    files = _describe_files(files_dir)
    created_by = str(metadata.get("created_by") or default_actor())
    run_id = str(metadata.get("run_id") or "")
    number = _claim(layout, model, created_by, run_id)
    version_uri = layout.version(model, number)
    total = sum(f["size"] for f in files)
    log.info("registering %s v%d: %d files, %.1f MB -> %s", model, number, len(files), total / 1e6, version_uri)
    written = [storage.join(version_uri, CLAIM)]
    try:
        for index, entry in enumerate(files, 1):
            target = storage.join(version_uri, entry["path"])
            log.debug("uploading %s (%d/%d, %d bytes)", entry["path"], index, len(files), entry["size"])
            storage.create_file(os.path.join(files_dir, *entry["path"].split("/")), target)
            written.append(target)
        manifest = {"format": 1, "model": model, "version": number, "created_at": now(), "created_by": created_by,
                    "run_id": run_id, "files": files, "metadata": metadata}
        storage.create_bytes(layout.manifest(model, number), dumps(manifest))
    except BaseException:
        log.error("registering %s v%d failed; removing the %d object(s) written", model, number, len(written))
        _discard(version_uri, written)
        raise
    log.info("registered %s v%d (%d files) at %s", model, number, len(files), version_uri)
    return {**manifest, "uri": version_uri}


def _discard(version_uri: str, written: list[str]) -> None:
    for uri in reversed(written):  # CLAIM last, so the number stays reserved until the end
        try:
            storage.delete(uri)
        except SearchtuneError as error:
            log.warning("could not remove %s: %s", uri, error)
    if not storage.is_gcs(version_uri):
        shutil.rmtree(version_uri, ignore_errors=True)
