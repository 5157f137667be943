"""Real-size logs: ingest, tokenize and the first training steps on N generated rows, with time and peak memory.

    python bench/scale.py --rows 2000000 --steps 20 [--format csv] [--results bench/results/scale.json]

Generates an N-row search log with ``searchtune sample-data --rows N`` (``data.sample_data.
generate_log``; cached under ``.searchtune/bench-scale/``, git-ignored), then runs each
stage in its own process, as the pipeline does, sampling the resident memory of that
process and its children (tokenize's workers) every 0.1 s:

1. ingest (``steps.ingest.ingest``, default parameters: the log has the sample's columns);
2. the raw ``tokenizers`` ``encode_batch`` rate on the same cores: query and product text
   of the first ``RAW_ROWS`` train rows, in batches of 8,192, the Rust tokenizer on every core
   (measured before and after the tokenize stage, on a shared machine);
3. tokenize (``steps.tokenize.tokenize``, default model parameters);
4. the first S optimizer steps of fine-tuning (``steps.finetune.prepare`` and its loader,
   default training parameters): when the first step starts and when the S-th ends,
   counted from the start of the stage (the fine-tune step's start).

Prints one JSON line (``rows``, ``ingest_seconds``, ``tokenize_seconds``,
``train_first_steps_seconds``, ``peak_rss_mb`` = the maximum over the stages, and more);
with ``--results`` also stores it in that file under ``runs.<rows>``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".searchtune" / "bench-scale"
TEMP = CACHE / "tmp"  # the stages' temporary folder (TMPDIR), watched for its size
RAW_ROWS = 196_608
RAW_BATCH = 8192


# --------------------------------------------------------------------------- stages (each in its own process)
def stage_ingest(data: str, splits_dir: str) -> dict:
    from searchtune.params import IngestParams
    from searchtune.steps import ingest

    started = time.perf_counter()
    stats = ingest.ingest(splits_dir, IngestParams(data=data))
    return {"seconds": time.perf_counter() - started, "rows_read": stats.rows_read, "rows_kept": stats.rows_kept,
            "duplicates_dropped": stats.duplicates_dropped, "splits": {k: v.model_dump() for k, v in stats.splits.items()}}


def stage_raw_encode(splits_dir: str) -> dict:
    import pyarrow.parquet as pq

    from searchtune.ml import modeling, tokens
    from searchtune.steps import splits

    backend = tokens.backend_tokenizer(modeling.load_tokenizer(modeling.resolve_base_model("")))
    parquet = pq.ParquetFile(splits.split_path(splits_dir, "train"))
    queries, texts = [], []
    for batch in parquet.iter_batches(batch_size=RAW_BATCH, columns=["query", "product_text"]):
        queries += batch.column("query").to_pylist()
        texts += batch.column("product_text").to_pylist()
        if len(queries) >= RAW_ROWS:
            break
    started = time.perf_counter()
    for start in range(0, len(queries), RAW_BATCH):
        backend.encode_batch(queries[start : start + RAW_BATCH])
        backend.encode_batch(texts[start : start + RAW_BATCH])
    seconds = time.perf_counter() - started
    return {"rows": len(queries), "seconds": seconds, "rows_per_second": len(queries) / seconds}


def stage_tokenize(splits_dir: str, tokenized: str) -> dict:
    from searchtune.params import ModelParams
    from searchtune.steps import tokenize

    started = time.perf_counter()
    stats = tokenize.tokenize(splits_dir, tokenized, ModelParams())
    seconds = time.perf_counter() - started
    rows = sum(s["rows"] for s in stats.splits.values())
    return {"seconds": seconds, "rows": rows, "rows_per_second": rows / seconds,
            "train": {k: v for k, v in stats.splits["train"].items()}}


def stage_train(tokenized: str, steps: int) -> dict:
    from searchtune.params import TrainParams
    from searchtune.steps import finetune

    started = time.perf_counter()
    run = finetune.prepare(tokenized, TrainParams())
    prepared = time.perf_counter() - started
    batches = iter(run.epoch_batches(0))
    first_step = None
    for step in range(steps):
        batch = next(batches)
        if step == 0:
            first_step = time.perf_counter() - started
        finetune.optimizer_step(run.loss(batch), run.forward, run.optimizer, run.scheduler).item()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "prepare_seconds": prepared, "first_step_start_seconds": first_step,
            "steps": steps, "train_rows": len(run.train), "seconds_per_step_after_first": (seconds - first_step) / steps}


STAGES = {"ingest": stage_ingest, "raw_encode": stage_raw_encode, "tokenize": stage_tokenize, "train": stage_train}


def _child(name: str, args: tuple, out: str) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = STAGES[name](*args)
    Path(out).write_text(json.dumps(result))


def run_stage(name: str, *args) -> dict:
    """Run a stage in a fresh process; return its result with the peak RSS of its process tree."""
    import psutil

    out = CACHE / f"{name}.result.json"
    out.unlink(missing_ok=True)
    process = multiprocessing.get_context("spawn").Process(target=_child, args=(name, args, str(out)))
    started = time.perf_counter()
    process.start()
    peak, peak_temp, done = 0, 0, threading.Event()

    def sample() -> None:
        nonlocal peak, peak_temp
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            peak_temp = max(peak_temp, folder_bytes(TEMP))  # ingest's spill partitions
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    process.join()
    done.set()
    sampler.join()
    if process.exitcode != 0:
        raise SystemExit(f"stage {name} failed (exit code {process.exitcode})")
    result = json.loads(out.read_text())
    result.update(peak_rss_mb=round(peak / 2**20), peak_temp_mb=round(peak_temp / 2**20),
                  wall_seconds=round(time.perf_counter() - started, 1))
    print(f"{name}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def folder_bytes(folder: Path) -> int:
    total = 0
    for directory, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(directory, name))
            except OSError:
                pass  # removed while walking
    return total


# --------------------------------------------------------------------------- main
def log_file(rows: int, extension: str) -> Path:
    """The generated log, made once per size and format."""
    path = CACHE / f"log-{rows}.{extension}"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "searchtune.cli", "sample-data", "-o", str(path), "--rows", str(rows)], check=True)
        print(f"generated {path} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--format", default="csv", choices=["csv", "csv.gz", "parquet", "jsonl", "jsonl.gz"])
    parser.add_argument("--results", default="", help="store the run in this JSON file under runs.<rows>")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    TEMP.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(TEMP)
    data = log_file(args.rows, args.format)
    work = CACHE / f"run-{args.rows}"
    shutil.rmtree(work, ignore_errors=True)
    splits, tokenized = str(work / "splits"), str(work / "tokenized")
    load_before = os.getloadavg()
    ingest = run_stage("ingest", str(data), splits)
    raw_before = run_stage("raw_encode", splits)
    tokenize = run_stage("tokenize", splits, tokenized)
    raw_after = run_stage("raw_encode", splits)
    train = run_stage("train", tokenized, args.steps)
    disk_mb = {"input": round(data.stat().st_size / 2**20), "ingest_spill_peak": ingest["peak_temp_mb"],
               "splits": round(folder_bytes(Path(splits)) / 2**20), "tokenized": round(folder_bytes(Path(tokenized)) / 2**20)}
    raw_rate = (raw_before["rows_per_second"] + raw_after["rows_per_second"]) / 2
    stages = {"ingest": ingest, "tokenize": tokenize, "train": train}
    result = {
        "rows": args.rows,
        "steps": args.steps,
        "format": args.format,
        "input_bytes": data.stat().st_size,
        "ingest_seconds": round(ingest["seconds"], 1),
        "ingest_rows_per_second": round(args.rows / ingest["seconds"]),
        "ingest_us_per_row": round(1e6 * ingest["seconds"] / args.rows, 2),
        "tokenize_seconds": round(tokenize["seconds"], 1),
        "tokenize_rows_per_second": round(tokenize["rows_per_second"]),
        "tokenize_us_per_row": round(1e6 * tokenize["seconds"] / tokenize["rows"], 2),
        "raw_encode_batch_rows_per_second": {"before": round(raw_before["rows_per_second"]), "after": round(raw_after["rows_per_second"]),
                                             "mean": round(raw_rate)},
        "tokenize_vs_raw_encode_batch": round(tokenize["rows_per_second"] / raw_rate, 3),
        "train_rows": train["train_rows"],
        "train_first_step_start_seconds": round(train["first_step_start_seconds"], 1),
        "train_first_steps_seconds": round(train["seconds"], 1),
        "train_seconds_per_step": round(train["seconds_per_step_after_first"], 3),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
        "peak_rss_mb_by_stage": {name: s["peak_rss_mb"] for name, s in stages.items()},
        "disk_mb": disk_mb,
        "duplicates_dropped": ingest["duplicates_dropped"],
        "cores": len(os.sched_getaffinity(0)),
        "load_average": {"start": [round(x, 2) for x in load_before], "end": [round(x, 2) for x in os.getloadavg()]},
    }
    print(json.dumps(result))
    if args.results:
        path = Path(args.results)
        stored = json.loads(path.read_text()) if path.exists() else {}
        stored.setdefault("runs", {})[str(args.rows)] = {"command": "python bench/scale.py " + " ".join(sys.argv[1:]), **result,
                                                        "stages": stages}
        path.write_text(json.dumps(stored, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
