"""What killed writers leave in a registry, which ``models verify --repair`` removes, and nothing else.

* ``*.searchtune-tmp`` files: the local back end writes every file to a hidden temporary
  name next to its target and renames or links it into place. A writer killed in between
  leaves it behind: complete, partial or empty (killed right after creating it). No reader
  lists them, but they hold disk space. Only files untouched for ``MIN_AGE_SECONDS`` go: a
  younger one may belong to a write in progress (a copy updates its file as it goes). On
  GCS nothing writes such names; they appear only where a local registry was copied up,
  and go whatever their age.
* Probe objects (``_probes/*.json``) older than ``MIN_AGE_SECONDS``: ``check_writable``
  deletes its probe within milliseconds, so an old one is a killed run's.

Everything else stays, including abandoned claims of killed registrations (they keep
their number from being reused) and expired read leases (``models prune`` removes them).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import time

from searchtune.io import storage
from searchtune.io.local import TMP_SUFFIX
from searchtune.registry.layout import Layout

MIN_AGE_SECONDS = 15 * 60


@dataclasses.dataclass
class Leftover:
    """One file or object a killed writer left; ``age`` in seconds (None: unknown)."""

    uri: str
    size: int
    age: float | None

    @property
    def removable(self) -> bool:
        return self.age is None or self.age >= MIN_AGE_SECONDS


def _local_temp_files(folder: str) -> list[Leftover]:
    found = []
    for directory, _dirs, files in os.walk(folder):
        for name in sorted(files):
            if name.endswith(TMP_SUFFIX):
                path = os.path.join(directory, name)
                try:
                    info = os.stat(path)
                except FileNotFoundError:  # renamed into place while we looked: a live write
                    continue
                found.append(Leftover(path, info.st_size, time.time() - info.st_mtime))
    return found


def _probes(layout: Layout) -> list[Leftover]:
    found = []
    now = _dt.datetime.now(_dt.timezone.utc)
    for uri, size in storage.list_sizes(layout.probes()).items():
        try:
            record = json.loads(storage.read_bytes(uri))
            age = (now - _dt.datetime.fromisoformat(record["at"])).total_seconds()
        except (storage.Missing, ValueError, KeyError, TypeError):
            continue  # gone meanwhile, or not a probe this code wrote: not ours to remove
        found.append(Leftover(uri, size, age))
    return found


def find(layout: Layout, models: list[str] | None) -> list[Leftover]:
    """Leftovers below the models' folders, or below the whole root (with probes) when ``models`` is None."""
    folders = [layout.root] if models is None else [layout.model(m) for m in models]
    found = []
    for folder in folders:
        if storage.is_gcs(folder):
            found += [Leftover(uri, size, None) for uri, size in storage.list_sizes(folder).items()
                      if uri.endswith(TMP_SUFFIX)]
        else:
            found += _local_temp_files(folder)
    if models is None:
        found += _probes(layout)
    return sorted(found, key=lambda leftover: leftover.uri)


def remove(leftovers: list[Leftover]) -> list[Leftover]:
    """Delete the removable leftovers; returns those deleted."""
    removed = [leftover for leftover in leftovers if leftover.removable]
    for leftover in removed:
        storage.delete(leftover.uri)
    return removed
