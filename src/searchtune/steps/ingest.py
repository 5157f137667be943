"""Ingest step: stream judgement/click logs, validate, quarantine bad rows, split by query.

Output (a directory): ``train.parquet``, ``validation.parquet``, ``test.parquet`` with
the canonical columns below (one Parquet file per split, in row groups of
``ROW_GROUP_ROWS``: the shards that tokenize reads in parallel), ``rejects.parquet``
(rows that failed validation, with file, row position and reason), and ``stats.json``
(fingerprint, sources, encodings, counts, per-split stats).

Canonical columns: ``query`` (str), ``product_text`` (str, the mapped text columns
joined), ``label`` (int8, 0/1), ``grade`` (float64, the label as read), ``target``
(float32 in [0, 1]: the grade rescaled, a soft training target; equals ``label`` for
binary labels), ``query_group`` (hex digest of the normalised query: the split key).

Memory stays bounded whatever the input size; two passes:

1. Every file is read in record batches (``steps.ingestion.files``: pyarrow's CSV, JSON and
   Parquet readers; ``.gz`` decompressed on the fly; text checked and decoded to UTF-8).
   Each batch is validated with Arrow kernels (``steps.ingestion.rows``); rejected rows
   stream into ``rejects.parquet``; clean rows are spilled, by a range of their query
   digest, into partition files (Arrow IPC, lz4) in a temporary folder.
2. Each partition (about ``PARTITION_INPUT_BYTES`` of input) is read alone, sorted by
   (query digest, query, product text, grade), exact duplicates (now adjacent) dropped,
   and appended to its split's file. Counts, positive rates, query counts and the
   fingerprint are accumulated on the way; the partitions are ranges of the digest, so
   the output order, and so the fingerprint, do not depend on the input's files or order.

Memory: one input batch plus one partition. Disk: the clean rows once more, compressed.
The splits appear under their names only when all of them are complete.

Longer than 300 lines: the two passes (rejects, spill partitions, deduplication, split
writers, fingerprint) are one algorithm whose parts share counts and row positions;
reading and validation live in their own modules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from searchtune import records
from searchtune.data import sample_data
from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.io.backend import Missing
from searchtune.params import IngestParams
from searchtune.steps.ingestion.files import (
    COMPRESSED_EXPANSION,
    Source,
    file_kind,
    read_batches,
)
from searchtune.steps.ingestion.rows import (
    DEFAULT_FRACTIONS,
    SplitFractions,
    as_text,
    reason_kind,
    validate,
)
from searchtune.steps.splits import CANONICAL_SCHEMA, ROW_GROUP_ROWS, SPLITS

log = logging.getLogger(__name__)

PARTITION_INPUT_BYTES = 32 << 20  # input bytes per spill partition (compressed input counts COMPRESSED_EXPANSION times)
SPILL_BUFFER_ROWS = 262144
MAX_PARTITIONS = 1024


# --------------------------------------------------------------------------- the two passes
REJECT_EXAMPLES = 3


class Rejects:
    """Rejected rows streamed to a Parquet file (the mapped columns as text, file, row position, reason)."""

    def __init__(self, path: str, columns: list[str]):
        self.path, self.columns = path, columns
        self.schema = pa.schema([*((c, pa.string()) for c in columns), ("source", pa.string()), ("source_row", pa.int64()),
                                 ("reason", pa.string())])
        self.partial = f"{path}.partial"
        self.writer = pq.ParquetWriter(self.partial, self.schema)
        self.count, self.by_kind, self.examples = 0, {}, []

    def add(self, source: str, raw: pa.Table | None, rows: np.ndarray, positions: np.ndarray, reasons: list[str]) -> None:
        if not len(reasons):
            return
        values = {c: as_text(raw.column(c)).take(pa.array(rows)) if raw is not None else pa.array([""] * len(reasons))
                  for c in self.columns}
        self.writer.write_table(pa.table({**values, "source": pa.array([source] * len(reasons), pa.string()),
                                          "source_row": pa.array(positions, pa.int64()), "reason": pa.array(reasons, pa.string())},
                                         schema=self.schema))
        self.count += len(reasons)
        for reason in reasons:
            kind = reason_kind(reason)
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        self.examples += [f"{source}:{int(p)}: {r}" for p, r in zip(positions[:REJECT_EXAMPLES], reasons[:REJECT_EXAMPLES], strict=True)]
        del self.examples[REJECT_EXAMPLES:]

    def publish(self) -> None:
        self.writer.close()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        self.writer.close()
        if os.path.exists(self.partial):
            os.remove(self.partial)


class Spill:
    """Clean rows in ``partitions`` files by range of query digest (Arrow IPC streams, lz4), on local disk."""

    def __init__(self, folder: str, partitions: int):
        self.folder, self.partitions, self.writers = folder, partitions, {}
        self.options = pa.ipc.IpcWriteOptions(compression="lz4")
        self.buffered: list[pa.Table] = []
        self.buffered_rows = 0

    def add(self, clean: pa.Table) -> None:
        # Batches are gathered first: cut into ~100 partitions at once, a 14k-row batch would make
        # writes of ~140 rows, whose per-write cost grows with the number of partitions.
        self.buffered.append(clean)
        self.buffered_rows += clean.num_rows
        if self.buffered_rows >= SPILL_BUFFER_ROWS:
            self._flush()

    def _flush(self) -> None:
        clean = pa.concat_tables(self.buffered).combine_chunks()
        self.buffered, self.buffered_rows = [], 0
        if not clean.num_rows:
            return
        partition = np.minimum((clean.column("position").to_numpy() * self.partitions).astype(np.int64), self.partitions - 1)
        order = np.argsort(partition, kind="stable")
        clean, partition = clean.drop_columns(["position"]).take(order), partition[order]
        bounds = np.searchsorted(partition, np.arange(self.partitions + 1))
        for p in np.unique(partition):
            if p not in self.writers:
                self.writers[p] = pa.ipc.new_stream(os.path.join(self.folder, f"{p:05d}.arrows"), clean.schema, options=self.options)
            self.writers[p].write_table(clean.slice(bounds[p], bounds[p + 1] - bounds[p]))

    def tables(self) -> Iterator[pa.Table]:
        """Each partition's rows in digest order of the partitions (one partition in memory at a time)."""
        self._flush()
        for writer in self.writers.values():
            writer.close()
        for p in sorted(self.writers):
            path = os.path.join(self.folder, f"{p:05d}.arrows")
            with pa.memory_map(path) as source:
                table = pa.ipc.open_stream(source).read_all().combine_chunks()
            os.remove(path)
            yield table


def partitions_for(sources: list[str]) -> int:
    """Spill partitions for these inputs: about one per ``PARTITION_INPUT_BYTES`` of (uncompressed) input."""
    total = 0
    for source in sources:
        kind, compressed = file_kind(source)
        with vanished_is_named(source):
            size = storage.stat(source)[0]
        total += size * (COMPRESSED_EXPANSION if compressed or kind == "parquet" else 1)
    return int(min(MAX_PARTITIONS, max(1, math.ceil(total / PARTITION_INPUT_BYTES))))


class Fingerprint:
    """Digest of the clean rows in (query digest, query, text, grade) order: the same rows hash the
    same whatever files or order they came in. Each of the five streams is the concatenation over all
    rows, so how the rows were cut into partitions does not matter."""

    def __init__(self):
        self.streams = [hashlib.sha256() for _ in range(5)]

    def add(self, table: pa.Table) -> None:
        for i, name in enumerate(("query", "product_text")):
            column = table.column(name).combine_chunks()
            _, offsets, data = column.buffers()
            offsets = np.frombuffer(offsets, dtype=np.int32)[column.offset : column.offset + len(column) + 1]
            self.streams[2 * i].update(np.diff(offsets).astype("<i4").tobytes())
            if data is not None:
                self.streams[2 * i + 1].update(memoryview(data)[offsets[0] : offsets[-1]])
        self.streams[4].update(table.column("grade").to_numpy().astype("<f8").tobytes())

    def hexdigest(self) -> str:
        return hashlib.sha256(b"".join(s.digest() for s in self.streams)).hexdigest()


def deduplicate(table: pa.Table) -> pa.Table:
    """Rows sorted by (query digest, query, text, grade) with exact duplicates dropped (first kept)."""
    keys = [("query_group", "ascending"), ("query", "ascending"), ("product_text", "ascending"), ("grade", "ascending")]
    table = table.take(pc.sort_indices(table, sort_keys=keys))  # stable: the first occurrence comes first
    if table.num_rows < 2:
        return table
    same = np.ones(table.num_rows - 1, dtype=bool)
    for name in ("query", "product_text", "grade"):
        column = table.column(name)
        same &= pc.equal(column.slice(1), column.slice(0, table.num_rows - 1)).to_numpy(zero_copy_only=False)
    return table.filter(pa.array(np.concatenate([[True], ~same])))


class SplitWriter:
    """One split's Parquet file, written in row groups of ``ROW_GROUP_ROWS``, with its running stats."""

    def __init__(self, path: str):
        self.path, self.partial = path, f"{path}.partial"
        self.writer = pq.ParquetWriter(self.partial, CANONICAL_SCHEMA)
        self.buffered: list[pa.Table] = []
        self.rows = self.queries = self.positives = 0

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        groups = table.column("query_group")
        self.queries += 1 + int(pc.sum(pc.not_equal(groups.slice(1), groups.slice(0, table.num_rows - 1))).as_py() or 0)
        self.rows += table.num_rows
        self.positives += int(pc.sum(table.column("label")).as_py() or 0)
        self.buffered.append(table)
        if sum(t.num_rows for t in self.buffered) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.buffered:
            self.writer.write_table(pa.concat_tables(self.buffered), row_group_size=ROW_GROUP_ROWS)
            self.buffered = []

    def stats(self) -> records.SplitStats:
        return records.SplitStats(rows=self.rows, queries=self.queries,
                                  positive_rate=round(self.positives / self.rows, 4) if self.rows else math.nan)

    def close(self) -> None:
        self._flush()
        self.writer.close()

    def publish(self) -> None:
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        self.writer.close()
        if os.path.exists(self.partial):
            os.remove(self.partial)


def ingest(
    output_dir: str,
    params: IngestParams,
    fractions: SplitFractions = DEFAULT_FRACTIONS,
    rejects_path: str | None = None,
    min_test_queries: int = 0,
) -> records.IngestStats:
    """Run the ingest step.

    Args:
        output_dir: local directory that receives the splits and ``stats.json``.
        params: where the data is (``params.data``; empty = the bundled sample), which
            columns hold query, product text and label, and the text encoding.
        fractions: query shares of the train and validation splits.
        rejects_path: where to write the rejected rows (default ``output_dir/rejects.parquet``).
        min_test_queries: the gate's ``min_test_queries``: fewer queries in the test split and no
            model could be blessed, so the run stops here, before training (0: not checked).

    Returns:
        The stats, also written to ``stats.json``.

    Raises:
        SearchtuneError: unreadable, corrupt or vanished input, a missing, duplicated or
            nested column, text that is not in the expected encoding, too many rejects, too few
            queries for the three splits, a split left without both classes, or a test split
            smaller than ``min_test_queries``.
    """
    sources = storage.expand(params.data or sample_data.default_sample_path())
    for source in sources:
        file_kind(source)  # every file type checked before any work
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rejects_path = rejects_path or str(out / records.REJECTS_FILE)
    Path(rejects_path).parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys([params.query_column, *params.text_column_list, params.label_column]))
    rejects = Rejects(rejects_path, columns)
    writers = {split: SplitWriter(str(out / records.split_file(split))) for split in SPLITS}
    try:
        with tempfile.TemporaryDirectory(prefix="searchtune-ingest-") as spill_dir:
            spill = Spill(spill_dir, partitions_for(sources))
            started = time.perf_counter()
            read = [_read_source(source, columns, params, fractions, spill, rejects) for source in sources]
            rows_read = sum(s.rows for s in read)
            log.info("pass 1 (read, validate, spill to %d partitions): %d rows in %.1f s", spill.partitions, rows_read,
                     time.perf_counter() - started)
            _check_rejects(rejects, rows_read, params)
            started = time.perf_counter()
            kept, fingerprint = 0, Fingerprint()
            for table in spill.tables():
                table = deduplicate(table)
                kept += table.num_rows
                fingerprint.add(table)
                split = table.column("split").to_numpy()
                for code, name in enumerate(SPLITS):
                    writers[name].add(table.filter(pa.array(split == code)).drop_columns(["split"]))
            log.info("pass 2 (deduplicate, write the splits): %d rows in %.1f s", kept, time.perf_counter() - started)
        for writer in writers.values():
            writer.close()
        split_stats = {name: writer.stats() for name, writer in writers.items()}
        check_splits(writers, fractions, min_test_queries)
    except BaseException:
        for writer in writers.values():
            writer.discard()
        rejects.discard()
        raise
    for writer in writers.values():
        writer.publish()
    fallback_lines = sum(s.fallback_lines for s in read)
    stats = records.IngestStats(
        fingerprint=fingerprint.hexdigest(),
        sources=sources,
        column_mapping=params.model_dump(exclude={"data", "max_reject_ratio"}),
        split_fractions=dataclasses.asdict(fractions),
        rows_read=rows_read,
        rows_rejected=rejects.count,
        rejects_by_reason=dict(sorted(rejects.by_kind.items(), key=lambda kv: -kv[1])),
        duplicates_dropped=rows_read - rejects.count - kept,
        rows_kept=kept,
        splits=split_stats,
        encodings={s.path: s.encoding for s in read},
        lines_decoded_with_fallback=fallback_lines,
    )
    stats.write(output_dir)
    log.info("kept %d rows (%d exact duplicates dropped); %s; data fingerprint %s", kept, stats.duplicates_dropped,
             ", ".join(f"{name} {stat.rows} rows / {stat.queries} queries" for name, stat in split_stats.items()), stats.fingerprint)
    if fallback_lines:
        log.warning("%d line(s) were not UTF-8 and were decoded as %s", fallback_lines, params.encoding)
    return stats


@contextlib.contextmanager
def vanished_is_named(path: str) -> Iterator[None]:
    """A listed input file that is gone when its turn comes is one line saying so, whichever call met it
    (a FileNotFoundError traceback, or a plain "no such file" that reads like a typo in --data)."""
    try:
        yield
    except (FileNotFoundError, Missing):
        if storage.exists(path):
            raise  # something else is missing: its own message names it
        raise SearchtuneError(f"{path}: vanished while the input was read: listed when the ingest step started, then "
                              "removed or renamed before it was read (is another process moving these files?)") from None


def check_splits(writers: dict[str, SplitWriter], fractions: SplitFractions, min_test_queries: int = 0) -> None:
    """Refuse splits no run could use, naming the cause: too few queries to give every split one, a split
    with one class, or fewer test queries than the gate needs (it would refuse every model, after training)."""
    empty = [name for name, writer in writers.items() if not writer.rows]
    if empty:
        rows, queries = sum(w.rows for w in writers.values()), sum(w.queries for w in writers.values())
        shares = "/".join(f"{share:.0%}" for share in (fractions.train, fractions.validation,
                                                        1 - fractions.train - fractions.validation))
        got = ", ".join(f"{name} {writer.queries}" for name, writer in writers.items())
        raise SearchtuneError(
            f"{queries} quer{'y' if queries == 1 else 'ies'} ({rows} rows) {'is' if queries == 1 else 'are'} too few to split by query: each query goes "
            f"whole to train, validation or test ({shares} of the queries), and the {' and '.join(empty)} split"
            f"{'s' if len(empty) > 1 else ''} got none (queries per split: {got}); more data, with more distinct queries")
    for name, writer in writers.items():
        if writer.positives in (0, writer.rows):
            raise SearchtuneError(
                f"the {name} split has {writer.rows} rows and one label class ({writer.positives} positive); "
                "need both positives and negatives (more data, or check --positive-threshold)")
    test = writers["test"].queries
    if test < min_test_queries:
        raise SearchtuneError(f"{test} test queries < min_test_queries {min_test_queries}: the gate could never bless a "
                              "model trained on this data; more data, or lower --min-test-queries")


def _read_source(source_path: str, columns: list[str], params: IngestParams, fractions: SplitFractions, spill: Spill,
                 rejects: Rejects) -> Source:
    """Pass 1 over one file: validate each batch, spill the clean rows, stream out the rejects."""
    kind, compressed = file_kind(source_path)
    source = Source(source_path, kind, compressed)
    with vanished_is_named(source_path), storage.local_copy(source_path) as local:
        for raw, positions in read_batches(source, local, columns, params):
            checked = validate(raw, params, fractions)
            spill.add(checked.clean)
            rejects.add(source_path, raw, checked.rejected, positions[checked.rejected], checked.reasons)
            _flush_malformed(source, rejects)
        _flush_malformed(source, rejects)
    log.info("read %d rows from %s (%s)", source.rows, source_path, source.encoding)
    return source


def _flush_malformed(source: Source, rejects: Rejects) -> None:
    if source.malformed:
        positions, reasons = zip(*source.malformed, strict=True)
        rejects.add(source.path, None, np.arange(len(reasons)), np.array(positions), list(reasons))
        source.malformed.clear()


def _check_rejects(rejects: Rejects, rows_read: int, params: IngestParams) -> None:
    """Publish the rejects; stop when their share is above ``max_reject_ratio``."""
    rejects.publish()
    ratio = rejects.count / max(rows_read, 1)
    log.info("validated %d rows: %d rejected (%.2f%%)", rows_read, rejects.count, 100 * ratio)
    for kind, count in sorted(rejects.by_kind.items(), key=lambda kv: -kv[1])[:5]:
        log.info("  rejected %d: %s", count, kind)
    if ratio > params.max_reject_ratio:
        raise SearchtuneError(
            f"{rejects.count} of {rows_read} rows ({ratio:.1%}) were rejected, above max_reject_ratio "
            f"{params.max_reject_ratio:.1%}; e.g. {'; '.join(rejects.examples)}; all rejected rows are in {rejects.path}")
