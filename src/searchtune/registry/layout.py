"""Where the registry keeps things below its root, and the small helpers every part shares.

Layout below the root (a local folder or ``gs://bucket/prefix``)::

    <model>/versions/<n>/CLAIM            who reserved number n (created-if-absent)
    <model>/versions/<n>/...files...      the version's files, each created-if-absent
    <model>/versions/<n>/MANIFEST.json    written LAST: every file with size + sha256, metadata
    <model>/aliases/<alias>.json          {version, previous_version, moved_at, moved_by, ...}
    <model>/aliases/history/<alias>/<seq>.json   one record per alias move, created-if-absent
    <model>/candidates/<time>-<run>.json  one record per evaluated candidate, created-if-absent
    <model>/leases/<n>.<expiry>.<reader>.json   a version being read (``leases``): prune keeps it
    <model>/prune-lock.json               held while ``models prune`` runs (``retention``)
    <model>/versions/<n>/PRUNING.json     a version being pruned: its manifest, moved aside
    _probes/<host>-<pid>-<random>.json    short-lived objects of ``check_writable``

Model and alias names start with a letter or digit, so ``_probes`` can never be a model
and every listing that looks for ``<model>/versions/...`` passes probes by.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import socket

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.io import storage

DEFAULT_REGISTRY = os.environ.get("SEARCHTUNE_REGISTRY", ".searchtune/registry")
DEFAULT_MODEL_NAME = "searchtune-relevance"
PRODUCTION = "production"
MANIFEST = records.MANIFEST_FILE
CLAIM = "CLAIM"
PRUNING = "PRUNING.json"
PROBES = "_probes"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
VERSION_REF = re.compile(r"^v?(\d+)$")


class AliasConflict(SearchtuneError):
    """The alias moved since the caller looked at it.

    Attributes:
        current: the alias record now in the registry (None if the alias does not exist
            or cannot be read).
    """

    def __init__(self, message: str, current: dict | None):
        super().__init__(message)
        self.current = current


def now() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def dumps(record: dict) -> bytes:
    """The registry's JSON encoding: indented, sorted keys, newline-terminated."""
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def sha256_file(path: str) -> str:
    """SHA-256 of a local file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_name(kind: str, name: str) -> str:
    """``name`` if it is a valid model/alias name, else a one-line error."""
    if not isinstance(name, str) or not NAME.match(name):
        raise SearchtuneError(f"invalid {kind} name {name!r}: use letters, digits, '.', '_' and '-'")
    return name


def default_actor() -> str:
    """``user@host`` of this process, recorded as who moved an alias or registered a version."""
    try:
        user = os.getlogin()
    except OSError:
        user = os.environ.get("USER") or str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def stamp(moment: _dt.datetime) -> str:
    """A UTC time as it appears in object names, e.g. ``20261124T055557Z`` (sorts in time order)."""
    return moment.astimezone(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def parse_stamp(text: str) -> _dt.datetime:
    """The time ``stamp`` wrote."""
    return _dt.datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=_dt.timezone.utc)


def v(version: int | None) -> str:
    """``v3``, or ``nothing`` for an alias that points nowhere."""
    return "nothing" if version is None else f"v{version}"


class Layout:
    """The URIs of everything below one registry root.

    Args:
        root: a local folder or a ``gs://bucket/prefix`` URI (local paths are made absolute).
    """

    def __init__(self, root: str):
        if not root:
            raise SearchtuneError("registry root is empty")
        self.root = str(root).rstrip("/") if storage.is_gcs(str(root)) else os.path.abspath(root)

    def model(self, model: str) -> str:
        return storage.join(self.root, check_name("model", model))

    def versions(self, model: str) -> str:
        return storage.join(self.model(model), "versions")

    def version(self, model: str, version: int) -> str:
        return storage.join(self.versions(model), str(int(version)))

    def manifest(self, model: str, version: int) -> str:
        return storage.join(self.version(model, version), MANIFEST)

    def aliases(self, model: str) -> str:
        return storage.join(self.model(model), "aliases")

    def alias(self, model: str, alias: str) -> str:
        return storage.join(self.aliases(model), f"{check_name('alias', alias)}.json")

    def history(self, model: str, alias: str) -> str:
        return storage.join(self.aliases(model), "history", check_name("alias", alias))

    def history_record(self, model: str, alias: str, seq: int) -> str:
        return storage.join(self.history(model, alias), f"{int(seq):08d}.json")

    def candidates(self, model: str) -> str:
        return storage.join(self.model(model), "candidates")

    def leases(self, model: str) -> str:
        return storage.join(self.model(model), "leases")

    def prune_lock(self, model: str) -> str:
        return storage.join(self.model(model), "prune-lock.json")

    def pruning(self, model: str, version: int) -> str:
        return storage.join(self.version(model, version), PRUNING)

    def probes(self) -> str:
        return storage.join(self.root, PROBES)
