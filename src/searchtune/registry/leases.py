"""Read leases: a version that is being read is not pruned.

``ModelRegistry.fetch`` (the champion step that hands production to the evaluation, a warm
start, ``models pull``) creates ``<model>/leases/<n>.<expiry>.<reader>.json`` before it reads
version n's manifest, and deletes it when the files are fetched. ``retention`` hides a
version first and looks for leases second; a reader creates its lease first and reads the
manifest second. Whichever of the two comes second sees the other: either the reader finds
no manifest (the version is gone, said in one line), or the prune finds the lease and gives
the version its manifest back.

The expiry is part of the name, so a prune needs one listing and no reads. A reader killed
mid-read leaves its lease behind: it protects the version until it expires
(``LEASE_SECONDS``), and the next prune deletes it. A reader that may not write (a
read-only registry, a serving pod with read access only) reads without a lease, and says so.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator

from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry.layout import Layout, default_actor, dumps, now, parse_stamp, stamp

log = logging.getLogger(__name__)

LEASE_SECONDS = 24 * 3600  # far longer than any fetch; a killed reader's lease holds a version this long at most
_NAME = re.compile(r"^(\d+)\.(\d{8}T\d{6}Z)\.[A-Za-z0-9._-]+\.json$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@contextlib.contextmanager
def held(layout: Layout, model: str, version: int, purpose: str) -> Iterator[None]:
    """Hold a read lease on ``version`` while the block runs (without one if it cannot be written)."""
    expires = _utcnow() + _dt.timedelta(seconds=LEASE_SECONDS)
    reader = _UNSAFE.sub("-", f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    uri = storage.join(layout.leases(model), f"{int(version)}.{stamp(expires)}.{reader}.json")
    try:
        storage.create_bytes(uri, dumps({"version": int(version), "by": default_actor(), "purpose": purpose,
                                         "acquired_at": now(), "expires_at": expires.isoformat()}))
    except SearchtuneError as error:
        log.warning("reading %s v%d without a read lease (%s): a prune running now may delete it", model, version, error)
        uri = None
    try:
        yield
    finally:
        if uri is not None:
            with contextlib.suppress(SearchtuneError):
                storage.delete(uri)


def _listed(layout: Layout, model: str) -> list[tuple[str, int, _dt.datetime]]:
    """(uri, version, expiry) of every lease object; other names in the folder are ignored."""
    folder = layout.leases(model)
    found = []
    for uri in storage.list_prefix(folder):
        match = _NAME.match(storage.relative(uri, folder))
        if match:
            found.append((uri, int(match.group(1)), parse_stamp(match.group(2))))
    return found


def fresh(layout: Layout, model: str) -> dict[int, _dt.datetime]:
    """The versions with an unexpired lease, each with the latest expiry among its leases."""
    at, held_until = _utcnow(), {}
    for _uri, version, expires in _listed(layout, model):
        if expires > at:
            held_until[version] = max(expires, held_until.get(version, expires))
    return held_until


def expired(layout: Layout, model: str) -> list[str]:
    """The lease objects past their expiry (left by readers that were killed)."""
    at = _utcnow()
    return [uri for uri, _version, expires in _listed(layout, model) if expires <= at]
