"""Progress of long loops (tokenizing, training, scoring), shown the way the caller can see it.

``track`` wraps an iterable:

* in a terminal it draws a tqdm bar;
* in a step that ``searchtune run`` started (``EVENTS_ENV`` set), the step's output is a
  pipe read by ``searchtune run``, so it writes a compact progress event at most every
  ``EVENT_EVERY_SECONDS``; ``searchtune run`` turns the events into one tqdm bar on its own
  terminal (``TerminalBar``) and keeps them out of the log;
* elsewhere (a KFP pod) a bar's carriage returns would turn into one endless line, so it
  logs one line at most every ``LOG_EVERY_SECONDS`` with the count, the rate and the time
  left (also done in the two cases above when the caller cannot see a bar).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")

LOG_EVERY_SECONDS = 30.0
EVENT_EVERY_SECONDS = 0.5
EVENTS_ENV = "SEARCHTUNE_PROGRESS_EVENTS"
EVENT_PREFIX = "@searchtune-progress "


def track(iterable: Iterable[Item], total: int | None, what: str, unit: str = "it",
          logger: logging.Logger | None = None, scale: int = 1) -> Iterator[Item]:
    """Yield the items of ``iterable`` while showing how far it got.

    Args:
        iterable: the work, one item at a time.
        total: how many units there are in all (None: unknown).
        what: a short label, e.g. "epoch 1/3" or "tokenize train".
        unit: what is counted, e.g. "rows" or "batches".
        logger: where the log lines go when there is no terminal (default: this module's).
        scale: units per item (e.g. rows per batch), so counts and rates read in ``unit``.
    """
    if sys.stderr.isatty() and not os.environ.get(EVENTS_ENV):
        from tqdm import tqdm

        with tqdm(total=total, desc=what, unit=unit, unit_scale=True, leave=False, dynamic_ncols=True) as bar:
            for item in iterable:
                yield item
                bar.update(scale if not total else min(scale, total - bar.n))
        return
    log = logger or logging.getLogger(__name__)
    events = bool(os.environ.get(EVENTS_ENV))
    started = last_log = last_event = time.monotonic()
    done = 0
    for item in iterable:
        yield item
        done = done + scale if not total else min(done + scale, total)  # a last, shorter chunk ends at the total
        now = time.monotonic()
        if events and now - last_event >= EVENT_EVERY_SECONDS:
            last_event = now
            emit(what, done, total, unit)
        if now - last_log >= LOG_EVERY_SECONDS:
            last_log = now
            rate = done / (now - started)
            left = f", {(total - done) / rate:.0f} s left" if total and rate > 0 else ""
            of = f"/{total}" if total else ""
            log.info("%s: %d%s %s (%.1f %s/s%s)", what, done, of, unit, rate, unit, left)
    if events:
        emit(what, done, total, unit)


def emit(what: str, done: int, total: int | None, unit: str) -> None:
    """Write one progress event line on stderr (read by ``searchtune run``)."""
    sys.stderr.write(EVENT_PREFIX + json.dumps({"what": what, "done": done, "total": total, "unit": unit}) + "\n")
    sys.stderr.flush()


def parse_event(line: str) -> dict | None:
    """The event in one line of a step's output, or None when the line is not one."""
    text = line.strip()
    if not text.startswith(EVENT_PREFIX):
        return None
    try:
        event = json.loads(text[len(EVENT_PREFIX):])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "what" in event and "done" in event else None


class TerminalBar:
    """One tqdm bar on ``stream`` driven by progress events; nothing at all when ``stream`` is no terminal."""

    def __init__(self, stream):
        self.stream = stream
        self.enabled = hasattr(stream, "isatty") and stream.isatty()
        self._bar = None
        self._key = None

    def update(self, prefix: str, event: dict) -> None:
        """Show ``event`` (from ``parse_event``) with ``prefix`` (the step's name) in front."""
        if not self.enabled:
            return
        from tqdm import tqdm

        key = (prefix, event["what"], event.get("total"), event.get("unit"))
        if key != self._key:
            self.close()
            self._key = key
            self._bar = tqdm(total=event.get("total"), desc=f"  {prefix}: {event['what']}", unit=event.get("unit") or "it",
                             unit_scale=True, leave=False, dynamic_ncols=True, file=self.stream)
        self._bar.n = int(event["done"])
        self._bar.refresh()

    def write(self, text: str) -> None:
        """Print a line above the bar, which is redrawn below it."""
        if self._bar is not None:
            self._bar.clear()
        self.stream.write(text + "\n")
        self.stream.flush()
        if self._bar is not None:
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._key = None, None
