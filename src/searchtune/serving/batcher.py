"""Model work off the event loop: one queue, micro-batched forward passes, a bounded backlog.

Why micro-batching: on CPU a forward pass for one short query costs about what it costs
for a dozen (the time goes to reading the weights, not to arithmetic on 7 tokens), so the
worker takes every request waiting in the queue, embeds all their texts in one pass and
then finishes each request (vector lookups, dot products, FAISS search) in its thread.
Concurrent requests thus share passes instead of queueing for one each.

Admission: at most ``max_pending`` requests wait or run; the next one is refused at once
with :class:`Overloaded` (the server answers 503 with Retry-After) instead of joining a
queue whose wait would outlast any client timeout.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)

CACHE_LOOKUPS = Counter("searchtune_text_cache_lookups", "Text embedding cache lookups", ["result"])
BATCH_TEXTS = Histogram("searchtune_embed_batch_texts", "Texts embedded per forward pass",
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
REFUSED = Counter("searchtune_requests_refused", "Requests refused because the work queue was full")


class Overloaded(Exception):
    """The work queue is full: refuse the request now (HTTP 503)."""


class TextVectorCache:
    """Least-recently-used map from text to its unit vector, safe across threads.

    Args:
        capacity: the most texts kept (0 disables the cache).
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, text: str) -> np.ndarray | None:
        with self._lock:
            vector = self._entries.get(text)
            if vector is not None:
                self._entries.move_to_end(text)
        CACHE_LOOKUPS.labels("hit" if vector is not None else "miss").inc()
        return vector

    def put(self, text: str, vector: np.ndarray) -> None:
        if not self.capacity:
            return
        with self._lock:
            self._entries[text] = vector
            self._entries.move_to_end(text)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)


@dataclass
class Job:
    """One request's model work: texts to embed, then ``finish(vectors)`` in the worker thread.

    Jobs that name the same ``combine`` are finished together instead, by
    ``combine(jobs) -> results`` (e.g. one FAISS search for every waiting query: a flat
    index is then read once per batch, not once per request); ``payload`` is theirs to use.
    """

    texts: list[str]
    finish: Callable[[np.ndarray], object] | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    combine: Callable[[list[Job]], list] | None = None
    payload: object = None
    vectors: np.ndarray | None = field(default=None)


class Batcher:
    """A worker thread that embeds the texts of every waiting job in one pass.

    Args:
        embed: texts -> unit vectors (``TextEncoder.embed``); None for a model without
            text vectors (jobs then carry no texts).
        cache: text vectors seen before.
        max_pending: the most jobs waiting or running; more are refused.
        max_batch_texts: the most texts one forward pass takes.
    """

    def __init__(self, embed: Callable[[list[str]], np.ndarray] | None, cache: TextVectorCache,
                 max_pending: int = 64, max_batch_texts: int = 256):
        self.embed, self.cache = embed, cache
        self.max_pending, self.max_batch_texts = max_pending, max_batch_texts
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="searchtune-model", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    async def submit(self, texts: list[str], finish: Callable[[np.ndarray], object] | None = None,
                     combine: Callable[[list[Job]], list] | None = None, payload: object = None):
        """Embed ``texts`` (with every other waiting job's) and return ``finish(vectors)``
        (or this job's part of ``combine(jobs)``, see :class:`Job`).

        Raises:
            Overloaded: ``max_pending`` jobs are already waiting or running.
        """
        with self._pending_lock:
            if self._pending >= self.max_pending:
                REFUSED.inc()
                raise Overloaded(f"{self._pending} requests are already waiting or running (limit {self.max_pending})")
            self._pending += 1
        loop = asyncio.get_running_loop()
        job = Job(list(texts), finish, loop.create_future(), loop, combine, payload)
        self._queue.put(job)
        return await job.future

    def close(self) -> None:
        self._queue.put(None)

    def _take_batch(self, first: Job) -> list[Job]:
        jobs, texts = [first], len(first.texts)
        while texts < self.max_batch_texts:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)
                break
            jobs.append(job)
            texts += len(job.texts)
        return jobs

    def _embed_jobs(self, jobs: list[Job]) -> None:
        """Fill each job's vectors from the cache, embedding the texts it lacks in one pass."""
        known: dict[str, np.ndarray] = {}
        missing: dict[str, None] = {}  # ordered and O(1) membership
        for job in jobs:
            for text in job.texts:
                if text in known or text in missing:
                    continue
                vector = self.cache.get(text)
                if vector is None:
                    missing[text] = None
                else:
                    known[text] = vector
        if missing:
            BATCH_TEXTS.observe(len(missing))
            for text, vector in zip(missing, self.embed(list(missing)), strict=True):
                known[text] = vector
                self.cache.put(text, vector)
        for job in jobs:
            if job.texts:
                job.vectors = np.stack([known[text] for text in job.texts])

    def _finish(self, jobs: list[Job]) -> list[tuple[object, BaseException | None]]:
        """``(result, error)`` of every job, combined jobs in one call per ``combine``."""
        outcomes: dict[int, tuple[object, BaseException | None]] = {}
        groups: dict[Callable, list[Job]] = {}
        for job in jobs:
            if job.combine is not None:
                groups.setdefault(job.combine, []).append(job)
                continue
            try:
                outcomes[id(job)] = (job.finish(job.vectors), None)
            except Exception as error:  # noqa: BLE001 - handed to the request that caused it
                outcomes[id(job)] = (None, error)
        for combine, group in groups.items():
            try:
                outcomes.update((id(job), (result, None)) for job, result in zip(group, combine(group), strict=True))
            except Exception as error:  # noqa: BLE001 - every request of the group gets the error
                outcomes.update((id(job), (None, error)) for job in group)
        return [outcomes[id(job)] for job in jobs]

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = self._take_batch(first)
            try:
                self._embed_jobs(jobs)
                outcomes = self._finish(jobs)
            except Exception as error:  # noqa: BLE001 - every waiting request must get an answer
                log.exception("embedding a batch of %d requests failed", len(jobs))
                outcomes = [(None, error)] * len(jobs)
            for job, (result, error) in zip(jobs, outcomes, strict=True):
                with self._pending_lock:
                    self._pending -= 1
                job.loop.call_soon_threadsafe(_settle, job.future, result, error)


def _settle(future: asyncio.Future, result, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
