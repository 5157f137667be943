"""Tokenize step: the model's fast tokenizer over every split, in parallel, into memory-mappable shards.

Padding happens per batch in the trainer (dynamic padding), so ids are stored unpadded
as Arrow ``list<int32>`` columns. For every split this writes ``<split>/part-NNNNN.arrow``
(Arrow IPC files, uncompressed so the trainer memory-maps them) with ``query_ids`` and
``text_ids`` (bi-encoder: query and product encoded apart) or ``pair_ids`` and
``pair_type_ids`` (cross-encoder: the pair in one sequence), plus ``label``, ``target``
and ``query_key`` (the query digest as uint64, for samplers that batch by query); and
``tokenize_stats.json`` with length statistics and truncation rates.

Every split is cut into tasks of about ``TASK_ROWS`` rows (whole Parquet row groups); one
process per core tokenizes a task into its shard, each with a one-threaded tokenizer, so
the Python side of tokenizing (taking the ids out of the tokenizer) runs on every core
too. Length statistics are merged from per-shard histograms, so they are exact. The
workers are started with ``spawn`` (the parent holds torch): a script that calls
:func:`tokenize` needs the usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from searchtune import records
from searchtune.ml import tokens
from searchtune.params import ModelParams
from searchtune.progress import track
from searchtune.steps import splits

log = logging.getLogger(__name__)

TASK_ROWS = splits.ROW_GROUP_ROWS  # one row group of the ingest output
ENCODE_ROWS = 16384  # rows encoded (and written as one record batch) at a time
HISTOGRAM_BINS = 4096  # lengths above count in the last bin; the max is kept apart
MAX_WORKERS = 16
POOL_MIN_ROWS = 100_000


def shard_file(index: int) -> str:
    return f"part-{index:05d}.arrow"


def length_stats(histogram: np.ndarray, longest: int, max_length: int) -> dict:
    """Mean, median, 95th percentile, max and truncation rate of lengths counted in ``histogram``."""
    rows = int(histogram.sum())
    if not rows:
        return {"mean": 0.0, "p50": 0, "p95": 0, "max": 0, "truncated_rate": 0.0}
    cumulative = np.cumsum(histogram)
    values = np.arange(len(histogram))

    def percentile(q: float) -> int:
        # numpy's default (linear) percentile on integers, from the counts.
        rank = q / 100 * (rows - 1)
        low, high = np.searchsorted(cumulative, [int(np.floor(rank)) + 1, int(np.ceil(rank)) + 1])
        return int(values[low] + (values[high] - values[low]) * (rank - np.floor(rank)))

    return {
        "mean": round(float((histogram * values).sum() / rows), 2),
        "p50": percentile(50),
        "p95": percentile(95),
        "max": int(longest),
        "truncated_rate": round(float(histogram[max_length + 1 :].sum() / rows), 4),
    }


def plan_tasks(path: str) -> list[tuple[list[int], int]]:
    """Row groups of a split file, grouped into tasks of about ``TASK_ROWS`` rows: ``(row groups, rows)`` each."""
    metadata = pq.ParquetFile(path).metadata
    tasks, current, rows = [], [], 0
    for group in range(metadata.num_row_groups):
        current.append(group)
        rows += metadata.row_group(group).num_rows
        if rows >= TASK_ROWS:
            tasks.append((current, rows))
            current, rows = [], 0
    return tasks + [(current, rows)] if current else tasks


_WORKER_BACKEND = {}


def _backend(tokenizer_dir: str):
    if tokenizer_dir not in _WORKER_BACKEND:
        _WORKER_BACKEND[tokenizer_dir] = tokens.backend_from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
    return _WORKER_BACKEND[tokenizer_dir]


def _one_thread() -> None:
    """Worker start: one tokenizer thread per process (the processes are the parallelism)."""
    os.environ["RAYON_NUM_THREADS"] = "1"


def tokenize_shard(split_path: str, row_groups: list[int], shard_path: str, tokenizer_dir: str, architecture: str,
                   max_length: int) -> dict:
    """Tokenize some row groups of a split into one shard file; returns its counts and length histograms."""
    backend = _backend(tokenizer_dir)
    histograms, longest, rows, real_tokens, writer = {}, {}, 0, 0, None
    parquet = pq.ParquetFile(split_path)
    columns = ["query", "product_text", "label", "target", "query_group"]
    with pa.OSFile(shard_path + ".partial", "wb") as sink:
        for batch in parquet.iter_batches(batch_size=ENCODE_ROWS, row_groups=row_groups, columns=columns):
            if architecture == "cross-encoder":
                ids, types, full = tokens.encode_pair_column(backend, batch.column("query"), batch.column("product_text"),
                                                             max_length)
                encoded, lengths = {"pair_ids": ids, "pair_type_ids": types}, {"pair": full}
            else:
                query_ids, query_full = tokens.encode_column(backend, batch.column("query"), max_length)
                text_ids, text_full = tokens.encode_column(backend, batch.column("product_text"), max_length)
                encoded, lengths = {"query_ids": query_ids, "text_ids": text_ids}, {"query": query_full, "text": text_full}
            keys = np.frombuffer(bytes.fromhex("".join(batch.column("query_group").to_pylist())), dtype=">u8")
            table = pa.record_batch({"label": batch.column("label").cast(pa.int8()), "target": batch.column("target").cast(pa.float32()),
                                     "query_key": pa.array(keys.astype(np.uint64)), **encoded})
            writer = writer or pa.ipc.new_file(sink, table.schema)
            writer.write_batch(table)
            rows += batch.num_rows
            for field, full in lengths.items():
                histograms[field] = histograms.get(field, 0) + np.bincount(np.minimum(full, HISTOGRAM_BINS - 1),
                                                                           minlength=HISTOGRAM_BINS)
                longest[field] = max(longest.get(field, 0), int(full.max(initial=0)))
                real_tokens += int(np.minimum(full, max_length).sum())
        if writer is not None:
            writer.close()
    os.replace(shard_path + ".partial", shard_path)
    return {"rows": rows, "tokens": real_tokens, "histograms": histograms, "longest": longest}


def _workers(tasks: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, tasks, MAX_WORKERS))


def tokenize(splits_dir: str, output_dir: str, params: ModelParams) -> records.TokenizeStats:
    """Run the tokenize step.

    Args:
        splits_dir: output of the ingest step.
        output_dir: local directory for the tokenized splits, the tokenizer and stats.
        params: the base model (whose tokenizer is used), the architecture (how a pair is
            encoded) and the truncation length.

    Returns:
        The statistics, also written to ``tokenize_stats.json``.
    """
    from searchtune.ml import modeling  # torch: only this process needs it, not the workers

    tokenizer = modeling.load_tokenizer(modeling.resolve_base_model(params.base_model))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = str(out / records.TOKENIZER_DIR)
    tokenizer.save_pretrained(tokenizer_dir)
    started = time.perf_counter()
    shards, total_rows = {}, 0
    for split in records.SPLITS:
        source, partial = splits.split_path(splits_dir, split), out / f"{split}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        planned = plan_tasks(source)
        total_rows += sum(rows for _, rows in planned)
        shards[split] = [(source, groups, str(partial / shard_file(i)), tokenizer_dir, params.architecture, params.max_length)
                         for i, (groups, _) in enumerate(planned)]
    tasks = [(split, arguments) for split, split_tasks in shards.items() for arguments in split_tasks]
    # Starting worker processes costs seconds; below POOL_MIN_ROWS one process (tokenizer threads on every core) is faster.
    workers = _workers(len(tasks)) if total_rows >= POOL_MIN_ROWS else 1
    log.info("tokenizing %d tasks of up to %d rows with %d process(es)", len(tasks), TASK_ROWS, workers)
    if workers == 1:
        results = ((split, tokenize_shard(*arguments)) for split, arguments in tasks)
        split_records = _merge(track(results, total=len(tasks), what="tokenize", unit="shards"), params)
    else:
        # Every split's tasks in one pool, so no core waits while a small split runs alone.
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=_one_thread) as pool:
            futures = [(split, pool.submit(tokenize_shard, *arguments)) for split, arguments in tasks]
            results = ((split, future.result()) for split, future in futures)
            split_records = _merge(track(results, total=len(tasks), what="tokenize", unit="shards"), params)
    for split in records.SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
        (out / f"{split}.partial").rename(out / split)
    seconds = time.perf_counter() - started
    rows = sum(r["rows"] for r in split_records.values())
    log.info("tokenized %d rows in %.1f s (%.0f rows/s)", rows, seconds, rows / max(seconds, 1e-9))
    stats = records.TokenizeStats(architecture=params.architecture, max_length=params.max_length,
                                  tokenizer=tokenizer.name_or_path, splits=split_records)
    stats.write(output_dir)
    log.info("wrote tokenized splits and tokenizer to %s", out)
    return stats


def _merge(results, params: ModelParams) -> dict:
    """Per-split records from the shards' counts and histograms."""
    merged = {split: {"rows": 0, "tokens": 0, "shards": 0, "histograms": {}, "longest": {}} for split in records.SPLITS}
    for split, result in results:
        into = merged[split]
        into["rows"] += result["rows"]
        into["tokens"] += result["tokens"]
        into["shards"] += 1
        for field, histogram in result["histograms"].items():
            into["histograms"][field] = into["histograms"].get(field, 0) + histogram
            into["longest"][field] = max(into["longest"].get(field, 0), result["longest"][field])
    split_records = {}
    for split, into in merged.items():
        fields = {f: length_stats(h, into["longest"][f], params.max_length) for f, h in into["histograms"].items()}
        split_records[split] = {"rows": into["rows"], "tokens": into["tokens"], **fields, "shards": into["shards"]}
        log.info("tokenized %s: %d rows, %d tokens, %d shards, %s", split, into["rows"], into["tokens"], into["shards"], fields)
    return split_records
