"""Batch orders: which rows form each batch of an epoch, as slices of one permutation.

A batch sampler is any object with ``batches(epoch)`` returning a :class:`BatchOrder`
and ``steps(epochs)``: :class:`LengthGroupedBatches` (a fixed number of rows per batch) is
the default; :class:`TokenBudgetBatches` fills each batch up to a token budget, so a GPU
gets the same work per step whatever the rows' lengths. Kept apart from ``ml.batching`` (which turns
an order into padded tensors) so a new sampler (by token budget, by query) reads on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from searchtune.errors import SearchtuneError

MEGA_BATCHES = 50  # length grouping sorts rows within windows of this many batches


class BatchOrder(Sequence):
    """Batches as slices of one permutation of rows: ``order[starts[b]:ends[b]]`` is batch ``b``.

    Memory is one int32 index per row (not one array object per batch): 80 MB for an epoch
    over 20M rows. Slicing (``order[10:]``, for a resumed epoch) and
    :meth:`shard` give new orders over the same permutation.
    """

    def __init__(self, rows: np.ndarray, starts: np.ndarray, ends: np.ndarray):
        self.rows, self.starts, self.ends = rows, starts, ends

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return BatchOrder(self.rows, self.starts[index], self.ends[index])
        return self.rows[self.starts[index] : self.ends[index]]

    def shard(self, rank: int, world_size: int) -> BatchOrder:
        """Rank ``rank``'s share for data parallelism: every ``world_size``-th batch, the same count on every rank."""
        if not 0 <= rank < world_size:
            raise SearchtuneError(f"rank {rank} is not in [0, {world_size})")
        per_rank = len(self) // world_size
        return BatchOrder(self.rows, self.starts[rank : per_rank * world_size : world_size],
                          self.ends[rank : per_rank * world_size : world_size])


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> BatchOrder:
    """Batches of rows of similar length; shuffled order when ``rng`` is given.

    Rows are shuffled, cut into windows of ``MEGA_BATCHES`` batches, sorted by length
    (longest first) inside each, then batched, and the batches shuffled: padding is small
    but batches still mix the data. Without ``rng``: longest first over all rows (inference).
    """
    count = len(lengths)
    if rng is None:
        rows = np.argsort(-lengths.astype(np.int32), kind="stable")
    else:
        rows = np.arange(count, dtype=np.int32)  # int32 and shuffled in place: 4 bytes a row, even for 20M rows
        rng.shuffle(rows)
        window = batch_size * MEGA_BATCHES
        for start in range(0, count, window):
            part = rows[start : start + window]
            part[:] = part[np.argsort(-lengths[part].astype(np.int32), kind="stable")]
    starts = np.arange(0, count, batch_size)
    ends = np.minimum(starts + batch_size, count)
    if rng is not None:
        order = rng.permutation(len(starts))
        starts, ends = starts[order], ends[order]
    return BatchOrder(rows, starts, ends)


class LengthGroupedBatches:
    """The default batch sampler: :func:`length_grouped_batches` seeded by ``(seed, epoch)``.

    The order depends only on ``(seed, epoch)``, so a resumed run repeats the same batches
    and skips those it did.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.lengths, self.batch_size, self.seed, self.rank, self.world_size = lengths, batch_size, seed, rank, world_size

    def batches(self, epoch: int) -> BatchOrder:
        order = length_grouped_batches(self.lengths, self.batch_size, np.random.default_rng([self.seed, epoch]))
        return order.shard(self.rank, self.world_size) if self.world_size > 1 else order

    def steps(self, epochs: int) -> int:
        return epochs * (math.ceil(len(self.lengths) / self.batch_size) // self.world_size)


def token_budget_batches(lengths: np.ndarray, max_tokens: int, rng: np.random.Generator) -> BatchOrder:
    """Batches of rows of similar length holding up to ``max_tokens`` padded tokens each.

    A batch's cost is its row count times its longest row (every row is padded to it), so
    rows are shuffled, sorted by length (longest first) within windows of about
    ``MEGA_BATCHES`` batches, and cut greedily: a batch starting at a row of length ``L``
    takes ``max_tokens // L`` rows (at least one). The batches are then shuffled.
    """
    count = len(lengths)
    rows = np.arange(count, dtype=np.int32)
    rng.shuffle(rows)
    longest = max(int(lengths.max(initial=1)), 1)
    window = max(max_tokens // longest, 1) * MEGA_BATCHES
    starts = []
    for start in range(0, count, window):
        part = rows[start : start + window]
        part[:] = part[np.argsort(-lengths[part].astype(np.int32), kind="stable")]
        sizes = np.maximum(max_tokens // np.maximum(lengths[part].astype(np.int64), 1), 1)
        at = 0
        while at < len(part):  # one iteration per batch: thousands per epoch, not one per row
            starts.append(start + at)
            at += int(sizes[at])
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.append(starts[1:], count).astype(np.int64)
    order = rng.permutation(len(starts))
    return BatchOrder(rows, starts[order], ends[order])


class TokenBudgetBatches:
    """Batch sampler by token budget: :func:`token_budget_batches` seeded by ``(seed, epoch)``, sharded by rank."""

    def __init__(self, lengths: np.ndarray, max_tokens: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if max_tokens < 1:
            raise SearchtuneError(f"a token budget must be at least 1 token, got {max_tokens}")
        self.lengths, self.max_tokens, self.seed, self.rank, self.world_size = lengths, max_tokens, seed, rank, world_size

    def batches(self, epoch: int) -> BatchOrder:
        order = token_budget_batches(self.lengths, self.max_tokens, np.random.default_rng([self.seed, epoch]))
        return order.shard(self.rank, self.world_size) if self.world_size > 1 else order

    def steps(self, epochs: int) -> int:
        """Optimizer steps over ``epochs`` (the batch count differs a little between epochs, so each is counted)."""
        return sum(len(self.batches(epoch)) for epoch in range(epochs))
