"""Progress of long loops (tokenizing, training, scoring), shown the way the caller can see it.

``track`` wraps an iterable. In a terminal it draws a tqdm bar; elsewhere (a KFP pod, a
``searchtune run`` step subprocess whose output is collected line by line) a bar's
carriage returns would turn into one endless line, so it logs one line at most every
``LOG_EVERY_SECONDS`` with the count, the rate and the time left.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")

LOG_EVERY_SECONDS = 30.0


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
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, desc=what, unit=unit, unit_scale=True, leave=False, dynamic_ncols=True) as bar:
            for item in iterable:
                yield item
                bar.update(scale)
        return
    log = logger or logging.getLogger(__name__)
    started = last = time.monotonic()
    done = 0
    for item in iterable:
        yield item
        done += scale
        now = time.monotonic()
        if now - last >= LOG_EVERY_SECONDS:
            last = now
            rate = done / (now - started)
            left = f", {(total - done) / rate:.0f} s left" if total and rate > 0 else ""
            of = f"/{total}" if total else ""
            log.info("%s: %d%s %s (%.1f %s/s%s)", what, done, of, unit, rate, unit, left)
