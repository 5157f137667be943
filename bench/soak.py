"""Soak: the model server under a fixed request rate for a long time; memory flat, latency stable?

One ``searchtune serve`` on 127.0.0.1 (``LocalServer``, as in ``bench/serving.py``) serves a
real registered version: a tiny model trained by ``searchtune run`` on the bundled sample,
with the product index the run built (``--model-dir`` to serve another). 8 clients of one
aiohttp session (the load tool of ``bench/serving.py``) send mixed requests at a fixed total
rate: search top-10 and rerank of 100 product ids from the index, half each, every query
never sent before (``serving.bodies_of``), so the server's query cache fills and then evicts.

Each client keeps its own schedule (an open loop): request k is due at ``start + k / per-client
rate``; a client that falls behind sends at once, and the lag is reported, so a server that
cannot keep up shows as lag instead of quietly lowering the rate. Latency is measured from the
send, and reported per time window (p50/p99, overall and per kind), with errors (non-200 or a
failed connection) and the server's VmRSS (``/proc/<pid>/status``) at each window's end.

Goal (issue 21): RSS growth <= 10 % from the start of the load to its end, no errors, the rate
sustained (at most 1 % of requests sent over 100 ms after their due time), and p99 stable,
defined here as the median p99 of the last quarter of the windows <= 1.5 x that of the first
quarter (a single window's p99 swings with the neighbours' jobs). The machine's load
average at start and end is recorded: other users share its 2 cores.

Usage: ``OMP_NUM_THREADS=1 python bench/soak.py [--minutes 20] [--rate 40] [--clients 8]
[--window-seconds 60] [--model-dir DIR] [--out FILE]``; prints the summary as one JSON line and
writes the full result to ``bench/results/soak.json`` (``--out``; runs shorter than 20 minutes
write only with an explicit ``--out``).
"""

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import serving as serving_bench  # noqa: E402  (bench/serving.py: the load tool and request bodies)

from searchtune.serving.local import LocalServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "soak.json"
RSS_GROWTH_LIMIT = 0.10
P99_DRIFT_LIMIT = 1.5
LATE_MS = 100  # a request sent this much after its due time counts as late
LATE_SHARE_LIMIT = 0.01  # the rate counts as sustained when at most this share of requests went out late


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return round(int(status.split("VmRSS:")[1].split()[0]) / 1024, 1)


def train_registered_model(work: str) -> tuple[str, str]:
    """A tiny model registered by a real ``searchtune run``; returns (version folder, the run's command)."""
    registry = f"{work}/registry"
    command = [sys.executable, "-m", "searchtune.cli.main", "run", "--max-train-rows", "300", "--epochs", "1",
               "--no-require-beat-base", "--registry", registry, "--output-dir", f"{work}/runs"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    versions = sorted(Path(registry).glob("*/versions/*/MANIFEST.json"))
    if done.returncode != 0 or not versions:
        sys.exit(f"training the model to serve failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    shown = "searchtune run --max-train-rows 300 --epochs 1 --no-require-beat-base --registry <tmp>"
    return str(versions[-1].parent), shown


def percentiles(latencies_s: list[float]) -> dict:
    if not latencies_s:
        return {"requests": 0}
    ms = np.array(latencies_s) * 1000
    return {"requests": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1)}


async def soak(urls: dict, bodies: dict, clients: int, rate: float, seconds: float, window: float, pid: int) -> dict:
    """Drive the server; returns the windows and the schedule's lag."""
    import aiohttp

    kinds = list(urls)
    samples: list[tuple[float, str, float, bool, float]] = []  # (sent at, kind, latency s, ok, lag s)
    interval = clients / rate
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        for kind in kinds:  # warm-up outside the clock (first ONNX/FAISS calls allocate)
            for _ in range(3):
                async with session.post(urls[kind], data=next(bodies[kind]), headers={"Content-Type": "application/json"}) as reply:
                    await reply.read()
        start_rss = rss_mb(pid)
        started = time.perf_counter()
        deadline = started + seconds

        async def client(number: int):
            due = started + number * interval / clients  # clients staggered evenly across one interval
            sent = 0
            while due < deadline:
                pause = due - time.perf_counter()
                if pause > 0:
                    await asyncio.sleep(pause)
                kind = kinds[(number + sent) % len(kinds)]
                body = next(bodies[kind])
                tick = time.perf_counter()
                ok = False
                try:
                    async with session.post(urls[kind], data=body, headers={"Content-Type": "application/json"}) as reply:
                        await reply.read()
                        ok = reply.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                samples.append((tick - started, kind, time.perf_counter() - tick, ok, tick - due))
                sent += 1
                due += interval

        async def sample_memory(rss_at: list):
            edge = started + window
            while edge <= deadline + 1e-6:
                await asyncio.sleep(max(0.0, edge - time.perf_counter()))
                rss_at.append(rss_mb(pid))
                edge += window

        rss_at: list[float] = []
        await asyncio.gather(sample_memory(rss_at), *(client(n) for n in range(clients)))
        wall = time.perf_counter() - started
    windows = []
    for number in range(int(round(seconds / window))):
        inside = [s for s in samples if number * window <= s[0] < (number + 1) * window]
        row = {"window": number + 1, "from_s": round(number * window), "to_s": round((number + 1) * window),
               "errors": sum(not s[3] for s in inside), **percentiles([s[2] for s in inside])}
        row["by_kind"] = {kind: percentiles([s[2] for s in inside if s[1] == kind]) for kind in kinds}
        row[f"sent_late_over_{LATE_MS}ms"] = sum(s[4] * 1000 > LATE_MS for s in inside)
        row["server_rss_mb"] = rss_at[number] if number < len(rss_at) else None
        windows.append(row)
    lag_ms = np.array([s[4] for s in samples]) * 1000
    return {"start_rss_mb": start_rss, "end_rss_mb": rss_mb(pid), "seconds": round(wall, 1), "windows": windows,
            "requests": len(samples), "errors": sum(not s[3] for s in samples),
            "achieved_rate_per_s": round(len(samples) / wall, 2),
            "overall": percentiles([s[2] for s in samples]),
            "schedule_lag": {"p50_ms": round(float(np.percentile(lag_ms, 50)), 1),
                             "p99_ms": round(float(np.percentile(lag_ms, 99)), 1),
                             "max_ms": round(float(lag_ms.max()), 1), f"late_over_{LATE_MS}ms": int((lag_ms > LATE_MS).sum())}}


def verdict(run: dict) -> dict:
    growth = (run["end_rss_mb"] - run["start_rss_mb"]) / run["start_rss_mb"]
    p99s = [w["p99_ms"] for w in run["windows"]]
    # One window's p99 swings 2x with the neighbours' jobs on this shared machine (the 1-minute trial: 89 to
    # 209 ms between 10-second windows), so stability compares the first and last quarter's medians.
    quarter = max(1, len(p99s) // 4)
    first, last = float(np.median(p99s[:quarter])), float(np.median(p99s[-quarter:]))
    p99_pass = last <= P99_DRIFT_LIMIT * first
    # Latency is timed from the send: when the server falls behind, the clients' schedule absorbs the wait
    # (the lag), so a load the machine did not sustain must fail here, not hide in a flat p99.
    late_share = run["schedule_lag"][f"late_over_{LATE_MS}ms"] / run["requests"]
    rate_pass = late_share <= LATE_SHARE_LIMIT
    return {"rss_growth": round(growth, 4), "rss_growth_limit": RSS_GROWTH_LIMIT, "rss_pass": growth <= RSS_GROWTH_LIMIT,
            "p99_first_quarter_median_ms": round(first, 1), "p99_last_quarter_median_ms": round(last, 1),
            "p99_last_over_first_quarter": round(last / first, 2),
            "p99_stable_definition": f"median p99 of the last {quarter} window(s) <= {P99_DRIFT_LIMIT} x that of the first {quarter}",
            "p99_first_window_ms": p99s[0], "p99_last_window_ms": p99s[-1], "p99_last_over_first_window": round(p99s[-1] / p99s[0], 2),
            "p99_max_over_median_window": round(max(p99s) / float(np.median(p99s)), 2),
            "p99_pass": p99_pass, "errors_pass": run["errors"] == 0,
            f"share_sent_over_{LATE_MS}ms_late": round(late_share, 4), "rate_sustained_limit": LATE_SHARE_LIMIT,
            "rate_sustained_pass": rate_pass,
            "pass": growth <= RSS_GROWTH_LIMIT and p99_pass and run["errors"] == 0 and rate_pass}


def regrade(path: str) -> None:
    """Recompute ``goal`` of a written result from its own windows, RSS and lag (after a change of criteria)."""
    result = json.loads(Path(path).read_text())
    rss = result["server_rss_mb"]
    run = {"start_rss_mb": rss["start_of_load"], "end_rss_mb": rss["end_of_load"],
           **{k: result[k] for k in ("windows", "errors", "requests", "schedule_lag")}}
    result["goal"] = verdict(run) | {"regraded": "goal recomputed from this file's figures by --regrade"}
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["goal"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="length of the load (default 20)")
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second, all clients together (default 40)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--window-seconds", type=float, default=0, help="report window (default 60; 10 below 5 minutes)")
    parser.add_argument("--model-dir", default="", help="a registered version to serve (default: train a tiny one)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--regrade", default="", metavar="RESULT", help="recompute the goal of a written result; no load")
    args = parser.parse_args()
    if args.regrade:
        return regrade(args.regrade)
    if args.minutes <= 0 or args.rate <= 0 or args.clients <= 0:
        sys.exit("--minutes, --rate and --clients must be above 0")
    seconds = args.minutes * 60
    window = args.window_seconds or (60.0 if args.minutes >= 5 else 10.0)
    if window > seconds:
        sys.exit(f"--window-seconds {window:g} is longer than the run ({seconds:g} s)")

    import pandas as pd

    from searchtune.data import sample_data
    from searchtune.ml import vector_index

    work = tempfile.mkdtemp(prefix="searchtune-bench-soak-")
    try:
        model_dir, model_command = (args.model_dir, "given by --model-dir") if args.model_dir \
            else train_registered_model(work)
        ids = pd.read_parquet(Path(model_dir) / "index" / vector_index.IDS_FILE)["product_id"].astype(str).tolist()
        sample = pd.read_parquet(sample_data.default_sample_path())
        queries = sample["search_term"].drop_duplicates().tolist()
        rng = np.random.default_rng(0)
        bodies = {kind: serving_bench.bodies_of(kind, queries, [], ids, rng) for kind in ("search", "rerank")}
        load_before = os.getloadavg()
        with LocalServer(["--model-dir", model_dir, "--model-name", "soak"], f"{work}/server.log",
                         env={"OMP_NUM_THREADS": "1"}) as server:
            pid = server.process.pid
            ready_rss = rss_mb(pid)
            urls = {"search": server.url + "/v1/models/soak-search:predict", "rerank": server.url + "/v1/models/soak:predict"}
            run = asyncio.run(soak(urls, bodies, args.clients, args.rate, seconds, window, pid))
            peak = round(int(Path(f"/proc/{pid}/status").read_text().split("VmHWM:")[1].split()[0]) / 1024, 1)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = f"OMP_NUM_THREADS=1 python bench/soak.py --minutes {args.minutes:g} --rate {args.rate:g} --clients {args.clients}"
    result = {
        "command": command + (f" --model-dir {args.model_dir}" if args.model_dir else ""),
        "model": {"served": model_command, "catalog_products_in_index": len(ids), "engine": "auto (ONNX Runtime)",
                  "server_threads": 1},
        "load": {"clients": args.clients, "rate_per_s": args.rate, "minutes": args.minutes, "window_s": window,
                 "mix": "alternating per client: search top-10 | rerank of 100 product ids from the index; every query new"},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_average_1_5_15_at_start": [round(x, 2) for x in load_before],
                    "load_average_1_5_15_at_end": [round(x, 2) for x in load_after],
                    "note": "2 cores shared with other engineers' jobs; client and server on the same cores"},
        "server_rss_mb": {"ready": ready_rss, "start_of_load": run["start_rss_mb"], "end_of_load": run["end_rss_mb"],
                          "peak_vmhwm": peak},
        "goal": verdict(run),
        **{k: run[k] for k in ("requests", "errors", "achieved_rate_per_s", "seconds", "overall", "schedule_lag", "windows")},
    }
    summary = {"pass": result["goal"]["pass"], "rss_growth": result["goal"]["rss_growth"],
               "rss_start_mb": run["start_rss_mb"], "rss_end_mb": run["end_rss_mb"],
               "p99_first_quarter_ms": result["goal"]["p99_first_quarter_median_ms"],
               "p99_last_quarter_ms": result["goal"]["p99_last_quarter_median_ms"],
               "requests": run["requests"], "errors": run["errors"], "achieved_rate_per_s": run["achieved_rate_per_s"],
               "load_average_start_end": [round(load_before[0], 2), round(load_after[0], 2)]}
    print(json.dumps(summary))
    if args.minutes >= 20 or args.out != str(DEFAULT_OUT):
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
