"""Prove, before any work is done, that a registry root can be listed, written, read and cleaned.

``check_writable`` does what registering does, on a throw-away object: it lists below
the root, creates ``_probes/<host>-<pid>-<random>.json`` create-if-absent, reads it back
with its generation, and deletes it. The probe lives under ``_probes/``, which no reader
lists (model names start with a letter or digit), and is gone when the check returns.
Locally, the folders it had to create stay (empty): removing them raced with a second
run checking the same new registry at the same moment, whose probe then lost its folder
between writing and linking (tests/test_hostile_runs.py starts two such runs).

``check_production`` is the cheap look at the version ``production`` points at that a run
makes before any work: its files present with their manifest's sizes (no checksums), so a
broken champion stops the run in seconds instead of after training.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid

from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry import aliases, versions
from searchtune.registry.layout import PRODUCTION, Layout, default_actor, dumps, now


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
        if state.problem and not visible:
            raise aliases.no_version_left(layout, model, name, f"alias record cannot be read ({state.problem})")
        if state.problem:
            raise aliases.unreadable(layout, model, name, state)
        if state.version not in visible:
            raise aliases.dangling(layout, model, name, state, visible)


def check_production(layout: Layout, model: str) -> dict | None:
    """The production manifest if its files are all there with the right sizes; None if unset.

    Raises:
        SearchtuneError: the alias cannot be read or points nowhere, or a file is missing
            or of another size (the first problems named, with the commands that fix it).
    """
    state = aliases.read(layout, model, PRODUCTION)
    if state.raw is None:
        return None
    if state.problem:
        raise aliases.unreadable(layout, model, PRODUCTION, state)
    listed = storage.list_sizes(layout.version(model, state.version))
    if layout.manifest(model, state.version) not in listed:
        raise aliases.dangling(layout, model, PRODUCTION, state, versions.numbers_in_use(layout, model)[1])
    manifest = versions.read_manifest(layout, model, state.version)
    problems = versions.missing_or_resized(manifest, listed)
    if not problems:
        return manifest
    ref = f"{layout.root}/{model}"
    more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
    back = state.record.get("previous_version")
    rollback = f"'searchtune models rollback {ref}' (to v{back}), " if back is not None else ""
    raise SearchtuneError(f"production of '{model}' is v{state.version}, whose files do not match its manifest: "
                          f"{'; '.join(problems[:2])}{more}; point production at a sound version: {rollback}"
                          f"'searchtune models promote {ref} VERSION'; details: 'searchtune models verify {ref}'")
