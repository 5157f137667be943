"""Tokenize step: the model's fast tokenizer over every split, in parallel, into memory-mappable shards.

Padding happens per batch in the trainer (dynamic padding), so ids are stored unpadded
as Arrow ``list<int32>`` columns. For every split this writes ``<split>/part-NNNNN.arrow``
(Arrow IPC files, uncompressed so the trainer memory-maps them) with ``query_ids`` and
``text_ids`` (bi-encoder: query and product encoded apart) or ``pair_ids`` and
``pair_type_ids`` (cross-encoder: the pair in one sequence), plus ``label``, ``target``
and ``query_key`` (the query digest as uint64, for samplers that batch by query); and
``tokenize_stats.json`` with length statistics and truncation rates.

A split is cut into tasks of about ``TASK_ROWS`` rows (whole Parquet row groups); one
process per core tokenizes a task into its shard, each with a one-threaded tokenizer, so
the Python side of tokenizing (taking the ids out of the tokenizer) runs on every core
too. Length statistics are merged from per-shard histograms, so they are exact.
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
from searchtune.steps import ingest

log = logging.getLogger(__name__)

TASK_ROWS = 262144
ENCODE_ROWS = 16384  # rows encoded (and written as one record batch) at a time
HISTOGRAM_BINS = 4096  # lengths above count in the last bin; the max is kept apart
MAX_WORKERS = 16


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


def plan_tasks(path: str) -> list[list[int]]:
    """Row groups of a split file, grouped into tasks of about ``TASK_ROWS`` rows."""
    metadata = pq.ParquetFile(path).metadata
    tasks, current, rows = [], [], 0
    for group in range(metadata.num_row_groups):
        current.append(group)
        rows += metadata.row_group(group).num_rows
        if rows >= TASK_ROWS:
            tasks.append(current)
            current, rows = [], 0
    return tasks + [current] if current else tasks


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
    plans = {split: plan_tasks(ingest.split_path(splits_dir, split)) for split in records.SPLITS}
    workers = _workers(max(len(p) for p in plans.values()))
    pool = None
    if workers > 1:
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                      initializer=_one_thread)
    log.info("tokenizing with %d process(es), %d-row tasks", workers, TASK_ROWS)
    try:
        split_records = {split: _tokenize_split(splits_dir, split, plans[split], out, tokenizer_dir, params, pool)
                         for split in records.SPLITS}
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    stats = records.TokenizeStats(architecture=params.architecture, max_length=params.max_length,
                                  tokenizer=tokenizer.name_or_path, splits=split_records)
    stats.write(output_dir)
    log.info("wrote tokenized splits and tokenizer to %s", out)
    return stats


def _tokenize_split(splits_dir: str, split: str, tasks: list[list[int]], out: Path, tokenizer_dir: str, params: ModelParams,
                    pool) -> dict:
    """One split's shards (written into ``<split>.partial`` and renamed when all are done) and its stats."""
    started = time.perf_counter()
    source = ingest.split_path(splits_dir, split)
    folder, partial = out / split, out / f"{split}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    arguments = [(source, groups, str(partial / shard_file(i)), tokenizer_dir, params.architecture, params.max_length)
                 for i, groups in enumerate(tasks)]
    if pool is None:
        results = (tokenize_shard(*a) for a in arguments)
    else:
        results = (f.result() for f in [pool.submit(tokenize_shard, *a) for a in arguments])
    merged = {"rows": 0, "tokens": 0, "histograms": {}, "longest": {}}
    for result in track(results, total=len(arguments), what=f"tokenize {split}", unit="shards"):
        merged["rows"] += result["rows"]
        merged["tokens"] += result["tokens"]
        for field, histogram in result["histograms"].items():
            merged["histograms"][field] = merged["histograms"].get(field, 0) + histogram
            merged["longest"][field] = max(merged["longest"].get(field, 0), result["longest"][field])
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    seconds = time.perf_counter() - started
    fields = {field: length_stats(h, merged["longest"][field], params.max_length) for field, h in merged["histograms"].items()}
    record = {"rows": merged["rows"], "tokens": merged["tokens"], **fields, "shards": len(arguments),
              "seconds": round(seconds, 2), "rows_per_second": round(merged["rows"] / max(seconds, 1e-9), 1)}
    log.info("tokenized %s: %d rows, %d tokens in %.1f s (%d shards), %s", split, merged["rows"], merged["tokens"], seconds,
             len(arguments), fields)
    return record
