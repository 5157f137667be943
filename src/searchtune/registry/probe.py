"""Prove, before any work is done, that a registry root can be listed, written, read and cleaned.

``check_writable`` does what registering does, on a throw-away object: it lists below
the root, creates ``_probes/<host>-<pid>-<random>.json`` create-if-absent, reads it back
with its generation, and deletes it. The probe lives under ``_probes/``, which no reader
lists (model names start with a letter or digit), and is gone when the check returns.
Locally, the folders it had to create stay (empty): removing them raced with a second
run checking the same new registry at the same moment, whose probe then lost its folder
between writing and linking (tests/test_hostile_runs.py starts two such runs).
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid

from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry import aliases, versions
from searchtune.registry.layout import Layout, default_actor, dumps, now


def _hint(layout: Layout, error: SearchtuneError) -> str:
    if not storage.is_gcs(layout.root):
        return "choose a folder this process can create and write (--registry)"
    bucket = storage.split_gcs(layout.root)[0]
    if isinstance(error, storage.AccessDenied):
        return (f"grant the pipeline's service account roles/storage.objectUser on bucket '{bucket}' "
                "(list, read, create and delete objects), or choose another --registry")
    if isinstance(error, storage.Missing):
        return f"create bucket '{bucket}' or correct --registry"
    return "check the registry location (--registry)"


def _probe(layout: Layout) -> None:
    probe = storage.join(layout.probes(), f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}.json")
    payload = dumps({"probe": "searchtune registry check_writable", "at": now(), "by": default_actor()})
    step = "list objects in"
    created = False
    try:
        storage.list_sizes(layout.probes())
        step = "create objects in"
        storage.create_bytes(probe, payload)
        created = True
        step = "read objects from"
        data, _generation = storage.read_with_generation(probe)
        if data != payload:
            raise SearchtuneError(f"{probe}: read back {0 if data is None else len(data)} bytes that differ from "
                                  f"the {len(payload)} written")
        step = "delete objects from"
        storage.delete(probe)
        created = False
    except SearchtuneError as error:
        if created:
            with contextlib.suppress(SearchtuneError):
                storage.delete(probe)
        raise SearchtuneError(f"registry {layout.root} is not usable: cannot {step} it: {error}; "
                              f"{_hint(layout, error)}") from None


def check_writable(layout: Layout, model: str | None = None) -> None:
    """Raise a one-line error unless the registry root can be listed, written, read and cleaned.

    Args:
        layout: the registry's layout.
        model: if given, also require that the model's aliases can be read and point at
            existing versions (the evaluate and register steps rely on both).

    Raises:
        SearchtuneError: naming the root (bucket), the operation that failed and what to fix.
    """
    _probe(layout)
    if model is None:
        return
    _claimed, visible = versions.numbers_in_use(layout, model)
    for name in aliases.names(layout, model):
        state = aliases.read(layout, model, name)
        if state.problem:
            raise aliases.unreadable(layout, model, name, state)
        if state.version not in visible:
            raise SearchtuneError(f"{state.uri}: points at v{state.version}, which has no manifest; point it at "
                                  f"an existing version ('searchtune models promote {layout.root}/{model} VERSION')")
