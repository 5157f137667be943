"""Batches of tokenized pairs for the model: memory-mapped splits, batch orders, vectorised collation, a prefetching loader.

Shared by training (``steps/finetune``), evaluation and serving, so every path pads and
scores pairs the same way.

A :class:`TokenizedSplit` holds Arrow ``list<int32>`` columns: read from the tokenize
step's shards through a memory map (a 20M-row split opens in seconds and costs only its
per-row lengths and labels in memory), or built in memory by ``ml.tokens``. A batch is
padded from the columns' offsets and values with numpy, never row by row in Python.

What the trainer iterates is a batch order (:class:`BatchOrder`, a sequence of row-index
arrays) made by a batch sampler; :class:`LengthGroupedBatches` is the default one, and
any object with ``batches(epoch)`` returning such a sequence can replace it (a sampler by
token budget, by query). ``BatchOrder.shard(rank, world_size)`` splits one order between
data-parallel ranks. :func:`loader` collates batches ahead of the model (torch DataLoader
workers and pinned memory on GPU).
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch
from sklearn.metrics import roc_auc_score

from searchtune.errors import SearchtuneError
from searchtune.ml.batch_orders import (  # noqa: F401  (re-exported: callers import batching only)
    MEGA_BATCHES,
    BatchOrder,
    LengthGroupedBatches,
    length_grouped_batches,
)

FIELDS = {"bi-encoder": ("query_ids", "text_ids"), "cross-encoder": ("pair_ids", "pair_type_ids")}
SHARD_PATTERN = "part-*.arrow"


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _is_ids(field: str) -> bool:
    return "type" not in field


class _Column:
    """One column over several chunks: per chunk its flat values (and offsets, for a list column) as numpy views."""

    def __init__(self, chunks: list[pa.Array]):
        is_list = bool(chunks) and pa.types.is_list(chunks[0].type)
        self.offsets = [chunk.offsets.to_numpy() for chunk in chunks] if is_list else []
        self.values = [(chunk.values if is_list else chunk).to_numpy(zero_copy_only=False) for chunk in chunks]

    def lengths(self, chunk: int, local: np.ndarray) -> np.ndarray:
        offsets = self.offsets[chunk]
        return offsets[local + 1] - offsets[local]

    def gather(self, chunk: np.ndarray, local: np.ndarray, dtype) -> np.ndarray:
        """One value per row (for a flat column)."""
        out = np.empty(len(local), dtype=dtype)
        for c in np.unique(chunk):
            picked = np.nonzero(chunk == c)[0]
            out[picked] = self.values[c][local[picked]]
        return out


class TokenizedSplit:
    """Tokenized rows: list columns (memory-mapped or in memory), labels, targets, per-row lengths.

    Rows are addressed ``0 .. len - 1``; a subset (``rows``) is kept without copying columns.
    In memory per row: the length (int16) used to group batches, and the row map when a
    subset is kept; ids, labels and targets are read from the columns per batch.
    """

    def __init__(self, batches: list[pa.RecordBatch], fields: Sequence[str], rows: np.ndarray | None = None):
        self.fields = list(fields)
        names = batches[0].schema.names if batches else []
        present = [name for name in (*self.fields, "label", "target") if name in names]
        self.columns = {name: _Column([b.column(name) for b in batches]) for name in present}
        self.chunk_starts = np.cumsum([0] + [b.num_rows for b in batches])
        self.subset = None if rows is None else np.asarray(rows, dtype=np.int64)
        # Filled chunk by chunk into one int16 array, with no whole-split int32 temporaries.
        lengths = np.zeros(int(self.chunk_starts[-1]), np.int16)
        for field in (f for f in self.fields if _is_ids(f) and f in self.columns):
            for chunk, offsets in enumerate(self.columns[field].offsets):
                part = lengths[self.chunk_starts[chunk] : self.chunk_starts[chunk + 1]]
                np.maximum(part, np.diff(offsets), out=part, casting="same_kind")
        self.lengths = lengths if self.subset is None else lengths[self.subset]

    @classmethod
    def open(cls, folder, architecture: str, max_rows: int = 0, seed: int = 0) -> TokenizedSplit:
        """Memory-map the shards of one tokenized split (the tokenize step's ``<split>/part-*.arrow``).

        Args:
            folder: the split's folder.
            architecture: what the model needs (its fields must be there).
            max_rows: keep a seeded sample of this many rows (0 = all).
            seed: seed of that sample.

        Raises:
            SearchtuneError: no shards, or shards tokenized for another architecture.
        """
        paths = sorted(glob.glob(os.path.join(str(folder), SHARD_PATTERN)))
        if not paths:
            raise SearchtuneError(f"{folder}: no tokenized shards ({SHARD_PATTERN}); run the tokenize step first")
        batches = []
        for path in paths:
            reader = pa.ipc.open_file(pa.memory_map(path))
            batches += [reader.get_batch(i) for i in range(reader.num_record_batches)]
        fields = FIELDS[architecture]
        missing = [f for f in fields if batches and f not in batches[0].schema.names]
        if missing:
            raise SearchtuneError(f"{folder} was tokenized for another architecture: no {missing} column "
                                  f"(re-run tokenize with architecture {architecture})")
        total = sum(b.num_rows for b in batches)
        rows = None
        if max_rows and total > max_rows:
            rows = np.sort(np.random.default_rng(seed).choice(total, max_rows, replace=False))
        return cls(batches, fields, rows)

    @classmethod
    def from_columns(cls, columns: dict[str, pa.ListArray], labels=None, targets=None) -> TokenizedSplit:
        """A split held in memory (what ``ml.tokens.encode_arrays`` returns), e.g. to score a frame."""
        length = len(next(iter(columns.values())))
        extra = {} if labels is None else {"label": pa.array(np.asarray(labels, np.float32))}
        if targets is not None:
            extra["target"] = pa.array(np.asarray(targets, np.float32))
        batch = pa.RecordBatch.from_pydict({**columns, **extra})
        return cls([batch] if length else [], list(columns))

    def __len__(self) -> int:
        return len(self.lengths)

    def take(self, rows: np.ndarray) -> TokenizedSplit:
        """The split's rows ``rows`` (e.g. one rank's share), sharing its columns without copying."""
        rows = np.asarray(rows, dtype=np.int64)
        part = object.__new__(TokenizedSplit)
        part.fields, part.columns, part.chunk_starts = self.fields, self.columns, self.chunk_starts
        part.subset = rows if self.subset is None else self.subset[rows]
        part.lengths = self.lengths[rows]
        return part

    def _locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(chunk, row within the chunk) of each row."""
        physical = np.asarray(rows, dtype=np.int64) if self.subset is None else self.subset[rows]
        chunk = np.searchsorted(self.chunk_starts, physical, side="right") - 1
        return chunk, physical - self.chunk_starts[chunk]

    def _values(self, name: str, rows: np.ndarray, dtype) -> np.ndarray:
        if name not in self.columns:
            return np.zeros(len(rows), dtype)
        return self.columns[name].gather(*self._locate(rows), dtype)

    @property
    def labels(self) -> np.ndarray:
        """Every row's 0/1 label as float32 (read from the columns: for validation-sized splits)."""
        return self._values("label", np.arange(len(self)), np.float32)

    def tokens(self, rows: np.ndarray) -> int:
        """Real (unpadded) ids in these rows, over every id field."""
        chunk, local = self._locate(rows)
        total = 0
        for field in self.fields:
            if _is_ids(field):
                total += sum(int(self.columns[field].lengths(c, local[chunk == c]).sum()) for c in np.unique(chunk))
        return total

    def collate(self, rows: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
        """The rows as model inputs, each field padded to the batch's longest row; plus ``label`` and ``target``."""
        rows = np.asarray(rows)
        chunk, local = self._locate(rows)
        chunks = np.unique(chunk)
        batch = {}
        for field in self.fields:
            column = self.columns[field]
            lengths = np.empty(len(rows), dtype=np.int64)
            for c in chunks:
                picked = chunk == c
                lengths[picked] = column.lengths(c, local[picked])
            width = int(lengths.max(initial=0))
            ids = np.full((len(rows), width), pad_id if _is_ids(field) else 0, dtype=np.int64)
            position = np.arange(width)
            inside = position[None, :] < lengths[:, None]
            for c in chunks:
                picked = np.nonzero(chunk == c)[0]
                starts = column.offsets[c][local[picked]]
                index = starts[:, None] + np.minimum(position[None, :], np.maximum(lengths[picked, None] - 1, 0))
                ids[picked] = np.where(inside[picked], column.values[c][index], ids[picked])
            batch[field] = torch.from_numpy(ids)
            if _is_ids(field):
                batch[field.replace("_ids", "_mask")] = torch.from_numpy(inside.astype(np.int64))
        batch["label"] = torch.from_numpy(self._values("label", rows, np.float32))
        batch["target"] = torch.from_numpy(self._values("target", rows, np.float32)) if "target" in self.columns \
            else batch["label"]
        return batch


class _Collated(torch.utils.data.Dataset):
    """A split whose items are whole batches: DataLoader hands ``__getitems__`` a batch's row indices."""

    def __init__(self, split: TokenizedSplit, pad_id: int):
        self.split, self.pad_id = split, pad_id

    def __len__(self) -> int:
        return len(self.split)

    def __getitems__(self, rows):
        return self.split.collate(np.asarray(rows), self.pad_id)


def _as_is(batch):
    return batch


def loader(split: TokenizedSplit, batches: Sequence, pad_id: int, device: torch.device, workers: int | None = None,
           prefetch: int = 4) -> torch.utils.data.DataLoader:
    """Collated batches in the order of ``batches``, prepared ahead of the model.

    Args:
        split: the rows.
        batches: a batch order (row-index arrays), e.g. ``LengthGroupedBatches.batches(epoch)[skip:]``.
        pad_id: the tokenizer's padding id.
        device: where the model is; on CUDA, batches are collated by worker processes
            into pinned memory, so the copy to the GPU overlaps the previous step.
        workers: collating processes (default: 2 on CUDA, none on CPU, where collation
            costs well under 1 % of a step and worker processes would take cores from it).
        prefetch: batches each worker prepares ahead.
    """
    workers = (2 if device.type == "cuda" else 0) if workers is None else workers
    return torch.utils.data.DataLoader(_Collated(split, pad_id), batch_sampler=batches, collate_fn=_as_is,
                                       num_workers=workers, pin_memory=device.type == "cuda",
                                       prefetch_factor=prefetch if workers else None)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}


def collate(split: TokenizedSplit, rows: np.ndarray, pad_id: int, device: torch.device) -> dict:
    """Pad each field to the batch's longest row only, on ``device``."""
    return to_device(split.collate(rows, pad_id), device)


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast on GPU, fp32 on CPU ('fp32'/'bf16' force one).

    On CPU bf16 autocast gained nothing here, even with AMX: 0.41 s vs 0.40 s per step of
    32 pairs (Xeon with amx_bf16, 2 cores), so fp32 keeps full precision for free.
    """
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


EVAL_BATCH_ROWS = {"cpu": 256, "cuda": 4096}  # scoring needs no activations kept: a GPU takes far larger batches


@torch.no_grad()
def predict_logits(model, split: TokenizedSplit, pad_id: int, device: torch.device, batch_size: int | None = None,
                   precision: str = "auto") -> np.ndarray:
    """The model's logit for every row of ``split`` (batches of similar length, longest first).

    Logits stay on the device until the end, so the GPU is not stopped after every batch
    to copy one batch's scores back. ``batch_size`` defaults to :data:`EVAL_BATCH_ROWS`.
    """
    model.eval()
    batch_size = batch_size or EVAL_BATCH_ROWS.get(device.type, EVAL_BATCH_ROWS["cpu"])
    order = length_grouped_batches(split.lengths, batch_size, rng=None)
    parts = []
    for rows in order:
        with autocast(device, precision):
            parts.append(model(collate(split, rows, pad_id, device)).float())
    out = np.empty(len(split), dtype=np.float32)
    if parts:
        out[order.rows] = torch.cat(parts).cpu().numpy()
    return out


def auc_or_nan(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else math.nan
