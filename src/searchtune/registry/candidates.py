"""The candidates log: one record per evaluated candidate, blessed or refused, and why.

Each record is its own object, ``<model>/candidates/<time>-<run id>.json``, created only if
absent, so records are never overwritten and concurrent writers (on local disk or GCS)
cannot lose each other's records. ``<time>`` is the UTC time of recording with
microseconds (``20261124T055557.123456Z``), so names sort in recording order. If two
writers pick the same name with different content, the later one adds ``-2``, ``-3``...;
the same content counts as already recorded (a retried request).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re

from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry.layout import Layout, dumps, now

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_SUFFIX = 100


def stamp() -> str:
    """The UTC time that starts a record's name, e.g. ``20261124T055557.123456Z``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def _checked(record: dict) -> dict:
    if not isinstance(record, dict):
        raise SearchtuneError(f"a candidate record must be a dict, not {type(record).__name__}")
    if not isinstance(record.get("run_id"), str):
        raise SearchtuneError(f"candidate record: 'run_id' must be a string, got {record.get('run_id')!r}")
    if not isinstance(record.get("blessed"), bool):
        raise SearchtuneError(f"candidate record: 'blessed' must be true or false, got {record.get('blessed')!r}")
    checked = {"created_at": now(), "reason": "", **record}
    try:
        json.dumps(checked)
    except (TypeError, ValueError) as error:
        raise SearchtuneError(f"candidate record for run {record['run_id']!r} is not JSON-serialisable ({error})") from None
    return checked


def record(layout: Layout, model: str, candidate: dict) -> dict:
    """Append a candidate record to the log (create-if-absent, never overwrites).

    Args:
        layout: the registry's layout.
        model: the model's name.
        candidate: ``run_id`` (str) and ``blessed`` (bool) are required; ``created_at``
            (defaults to now), ``reason`` (defaults to ""), and anything else the evaluate
            step knows (``gate_metric``, ``value``, ``low``, ``high``, ...) are kept as given.

    Returns:
        The stored record plus ``uri``, where it was written.

    Raises:
        SearchtuneError: the record lacks ``run_id``/``blessed`` or is not JSON.
    """
    checked = _checked(candidate)
    data = dumps(checked)
    base = f"{stamp()}-{_UNSAFE.sub('-', checked['run_id'])[:100] or 'no-run-id'}"
    for attempt in range(1, _MAX_SUFFIX + 1):
        uri = storage.join(layout.candidates(model), f"{base}.json" if attempt == 1 else f"{base}-{attempt}.json")
        try:
            storage.create_bytes(uri, data)
        except storage.PreconditionFailed:
            continue
        log.info("recorded candidate %s of %s (%s) at %s", checked["run_id"], model,
                 "blessed" if checked["blessed"] else "refused", uri)
        return {**checked, "uri": uri}
    raise SearchtuneError(f"{layout.candidates(model)}: {_MAX_SUFFIX} records named {base}*; not recording another")


def read(layout: Layout, model: str, limit: int | None = 20) -> list[dict]:
    """The newest ``limit`` candidate records (all when None), newest first.

    A record that cannot be parsed is returned as ``{"uri": ..., "unreadable": why}``.
    """
    if limit is not None and limit < 1:
        raise SearchtuneError(f"limit must be at least 1, got {limit}")
    folder = layout.candidates(model)
    uris = sorted(storage.list_prefix(folder), key=lambda u: storage.relative(u, folder), reverse=True)
    found = []
    for uri in uris[:limit]:
        try:
            parsed = json.loads(storage.read_bytes(uri))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            found.append({"uri": uri, "unreadable": f"not valid JSON ({error})"})
            continue
        found.append({**parsed, "uri": uri} if isinstance(parsed, dict) else {"uri": uri, "unreadable": "not a JSON object"})
    return found
