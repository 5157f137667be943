"""Serving latency under load: the KServe server vs today's stdlib ``serve``, side by side.

Scenarios (each at concurrency 1 and 8, a closed loop of an async HTTP client: aiohttp,
every request to 127.0.0.1, bounded in count and in time):

- ``rerank``: 1 query x 100 candidate product ids from the index (new server; queries
  embedded by ONNX Runtime, the default when installed; ``rerank_torch_engine``: the same
  with ``--engine torch``);
- ``search``: top-10 over the catalog vectors (new server; 1,000,000 synthetic vectors,
  100,000 with ``--quick``);
- ``old_rerank``: 1 query x 100 (query, product_text) pairs on today's server, loaded from
  git history (commit c321dbd, ``src/searchtune/serve.py``); two lines adapted to the
  model record's attribute access, the algorithm untouched;
- ``rerank_texts``: 1 query x 100 product texts never seen before (embedded on the fly).

Every request carries a query not sent before (no cache hits). Every scenario runs once per
round, rounds alternate (3 in a full run), and each statistic is the median over rounds.
Also measured: the index build for the synthetic catalog (time, peak memory, recall) in a
child process, and the model's embedding throughput, from which the time to embed a 1M
catalog is projected. With an IVF index, search is measured a second time on a server with
``nprobe`` = 1/16 of the cells (the synthetic clusters need fewer probes than real data may).

Usage: ``OMP_NUM_THREADS=1 python bench/serving.py [--quick] [--model-dir DIR]``; prints one
JSON line (``rerank_p99_ms``, ``search_p99_ms``, ``old_rerank_p99_ms``, ...: concurrency 1
unless named ``_c8``) and writes the full result to ``bench/results/serving.json`` (``--out``;
``--quick`` writes only with an explicit ``--out``).
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from searchtune.serving.local import LocalServer, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OLD_COMMIT = "c321dbd"
CANDIDATES = 100


def train_model(work: str) -> str:
    """A real bi-encoder on the bundled sample (1 epoch on 512 rows; latency does not depend on its quality)."""
    from searchtune.data import sample_data
    from searchtune.params import IngestParams, ModelParams, TrainParams
    from searchtune.steps import finetune, ingest, tokenize

    ingest.ingest(f"{work}/splits", IngestParams(data=sample_data.default_sample_path()))
    tokenize.tokenize(f"{work}/splits", f"{work}/tokenized", ModelParams())
    finetune.finetune(f"{work}/tokenized", f"{work}/model", TrainParams(epochs=1, max_train_rows=512))
    return f"{work}/model"


def synthetic_vectors(count: int, dimension: int, seed: int) -> np.ndarray:
    """Unit vectors around 2,000 fixed cluster centres (catalogs cluster; uniform noise would not).

    The centres are the same for every ``seed``, so probe queries come from the catalog's mixture.
    """
    centres = np.random.default_rng(0).standard_normal((2000, dimension), dtype=np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((count, dimension), dtype=np.float32)
    for start in range(0, count, 100_000):
        part = centres[rng.integers(0, len(centres), min(100_000, count - start))]
        out[start : start + len(part)] = part + 0.6 * rng.standard_normal(part.shape, dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def build_synthetic_index(model_dir: str, count: int, out: str) -> None:
    """Child process: generate, build, save; prints its timings (peak memory is read by the parent)."""
    from searchtune.ml import embedding, vector_index

    encoder_record = json.loads((Path(model_dir) / "searchtune_model.json").read_text())
    vectors = synthetic_vectors(count, 384, seed=1)
    probes = synthetic_vectors(256, 384, seed=2)
    generated_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    index, parameters = vector_index.build(vectors, probes=probes)
    seconds = time.perf_counter() - started
    ids = [f"syn-{i:07d}" for i in range(count)]
    record = vector_index.IndexRecord(
        **parameters, count=count, dimension=384, build_seconds=round(seconds, 2), architecture="bi-encoder",
        max_length=encoder_record["max_length"], model_fingerprint=embedding.model_fingerprint(model_dir),
        catalog={"source": f"synthetic: {count} unit vectors around 2,000 centres (bench/serving.py)"})
    vector_index.save(out, index, ids, record)
    print(json.dumps({"build_seconds": round(seconds, 1), "rss_after_generating_mb": round(generated_rss),
                      **{k: v for k, v in parameters.items()}}))


def measure_index_build(model_dir: str, count: int, out: str) -> dict:
    started = time.perf_counter()
    child = subprocess.run([sys.executable, __file__, "--build-index", out, "--model-dir", model_dir, "--count", str(count)],
                           capture_output=True, text=True, check=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    result["total_seconds_with_generation_and_save"] = round(time.perf_counter() - started, 1)
    result["index_file_mb"] = round(os.path.getsize(os.path.join(out, "index.faiss")) / 1e6)
    return result


def embedding_throughput(model_dir: str, texts: list[str]) -> dict:
    """Catalog embedding speed of each engine on one thread (batches of 64, real product texts)."""
    from searchtune.ml import embedding

    result = {"texts": len(texts), "threads": 1}
    for engine in ("torch", "onnx"):
        encoder = embedding.TextEncoder(model_dir, threads=1, engine=engine)
        encoder.embed(texts[:64])
        started = time.perf_counter()
        encoder.embed(texts)
        per_second = len(texts) / (time.perf_counter() - started)
        result[engine] = {"texts_per_second": round(per_second, 1),
                          "projected_hours_for_1m_products": round(1e6 / per_second / 3600, 2)}
    return result


def old_server_command(model_dir: str, port: int, work: str) -> list[str]:
    source = subprocess.run(["git", "show", f"{OLD_COMMIT}:src/searchtune/serve.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    adapted = source.replace('self.config["architecture"]', "self.config.architecture").replace(
        'self.config["max_length"]', "self.config.max_length")
    assert adapted.count("self.config.") == 2, "today's serve.py changed: adapt the two record lookups again"
    Path(work, "old_serve.py").write_text(adapted)
    code = (f"import sys; sys.path.insert(0, {work!r}); import old_serve; "
            f"s = old_serve.make_server(old_serve.RelevanceScorer({model_dir!r}), 'old', '127.0.0.1', {port}); s.serve_forever()")
    return [sys.executable, "-c", code]


async def load(url: str, bodies, concurrency: int, requests: int, max_seconds: float, warmup: int = 3) -> dict:
    """Closed loop: ``concurrency`` clients send ``requests`` bodies in total (at most ``max_seconds``)."""
    import aiohttp

    latencies, errors, sent = [], 0, 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        for _ in range(warmup):
            async with session.post(url, data=next(bodies), headers={"Content-Type": "application/json"}) as response:
                await response.read()
        deadline = time.perf_counter() + max_seconds
        started = time.perf_counter()

        async def client():
            nonlocal errors, sent
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                body = next(bodies)  # made before the clock starts
                tick = time.perf_counter()
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - tick)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(ms), "errors": errors, "seconds": round(wall, 1),
            "requests_per_second": round(len(ms) / wall, 2), **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1)
                                                               for q in (50, 95, 99)}}


QUERY_NUMBERS = itertools.count()  # shared by every scenario: no request repeats a query another one sent


def bodies_of(kind: str, queries: list[str], texts: list[str], ids: list[str], rng: np.random.Generator):
    for n in QUERY_NUMBERS:
        query = f"{queries[n % len(queries)]} {n // len(queries) or ''}".strip()
        if kind == "search":
            yield json.dumps({"instances": [{"query": query, "k": 10}]})
        elif kind == "rerank":
            picks = rng.integers(0, len(ids), CANDIDATES)  # choice without replacement is O(catalog) per call
            yield json.dumps({"instances": [{"query": query, "candidates": [{"product_id": ids[i]} for i in picks]}]})
        elif kind == "rerank_texts":
            chosen = rng.choice(len(texts), CANDIDATES, replace=False)
            yield json.dumps({"instances": [{"query": query, "candidates": [{"product_text": f"{texts[i]} #{n}"} for i in chosen]}]})
        else:
            picks = rng.choice(len(texts), CANDIDATES, replace=False)
            yield json.dumps({"instances": [{"query": query, "product_text": texts[i]} for i in picks]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 vectors and fewer requests (about 3 minutes)")
    parser.add_argument("--model-dir", default="", help="a trained bi-encoder (default: train a small one)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "serving.json"))
    parser.add_argument("--build-index", default="", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_index:
        return build_synthetic_index(args.model_dir, args.count, args.build_index)

    import pandas as pd

    from searchtune.data import sample_data

    count = 100_000 if args.quick else 1_000_000
    plan = ({"new": (60, 150), "old": (5, 8), "texts": 20, "rounds": 1} if args.quick
            else {"new": (200, 400), "old": (10, 16), "texts": 30, "rounds": 3})
    work = tempfile.mkdtemp(prefix="searchtune-bench-serving-")
    model_dir = args.model_dir or train_model(work)
    sample = pd.read_parquet(sample_data.default_sample_path())
    queries = sample["search_term"].drop_duplicates().tolist()
    texts = (sample["product_title"] + " | " + sample["brand"]).drop_duplicates().tolist()
    result = {"command": "OMP_NUM_THREADS=1 python bench/serving.py" + (" --quick" if args.quick else ""),
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "note": "2 cores shared with other users; client, new server and old server on the same cores"},
              "embedding": embedding_throughput(model_dir, texts[:1000])}
    result["index_build"] = measure_index_build(model_dir, count, f"{work}/index")
    rng = np.random.default_rng(0)
    ids = [f"syn-{i:07d}" for i in range(count)]
    new_args = ["--model-dir", model_dir, "--index-dir", f"{work}/index", "--model-name", "bench"]
    # The synthetic clusters need few IVF probes; real embeddings may need more: search also on a server with a
    # fixed, conservative nprobe (1/16 of the cells) to show the budget holds there too.
    nprobe = (result["index_build"].get("nlist") or 0) // 16
    old_port = free_port()
    old = subprocess.Popen(old_server_command(model_dir, old_port, work), stdout=open(f"{work}/old.log", "wb"),
                           stderr=subprocess.STDOUT)
    rounds: dict[str, list[dict]] = {}
    try:
        with contextlib.ExitStack() as servers:
            new = servers.enter_context(LocalServer(new_args, f"{work}/new.log", env={"OMP_NUM_THREADS": "1"}))
            by_torch = servers.enter_context(LocalServer([*new_args, "--engine", "torch"], f"{work}/torch.log",
                                                         env={"OMP_NUM_THREADS": "1"}))
            probed = servers.enter_context(LocalServer([*new_args, "--nprobe", str(nprobe)], f"{work}/probed.log",
                                                       env={"OMP_NUM_THREADS": "1"})) if nprobe else None
            scenarios = []  # (name, url, body kind, concurrency, requests, warm-up)
            for concurrency, runs in ((1, plan["new"][0]), (8, plan["new"][1])):
                scenarios += [(f"rerank_c{concurrency}", new.url + "/v1/models/bench:predict", "rerank", concurrency, runs, 3),
                              (f"rerank_torch_engine_c{concurrency}", by_torch.url + "/v1/models/bench:predict", "rerank",
                               concurrency, runs, 3),
                              (f"search_c{concurrency}", new.url + "/v1/models/bench-search:predict", "search", concurrency, runs, 3)]
                if probed:
                    scenarios.append((f"search_nprobe{nprobe}_c{concurrency}", probed.url + "/v1/models/bench-search:predict",
                                      "search", concurrency, runs, 3))
            scenarios.append(("rerank_texts_c1", new.url + "/v1/models/bench:predict", "rerank_texts", 1, plan["texts"], 1))
            for concurrency, runs in ((1, plan["old"][0]), (8, plan["old"][1])):
                scenarios.append((f"old_rerank_c{concurrency}", f"http://127.0.0.1:{old_port}/v1/models/old:predict", "old",
                                  concurrency, runs, 1))
            for _ in range(plan["rounds"]):  # every scenario once per round: machine noise hits all alike
                for name, url, kind, concurrency, runs, warmup in scenarios:
                    rounds.setdefault(name, []).append(asyncio.run(load(
                        url, bodies_of(kind, queries, texts, ids, rng), concurrency, runs, 120, warmup)))
            for label, server in (("new_server_peak_rss_mb", new), ("probed_server_peak_rss_mb", probed)):
                if server is not None:
                    status = Path(f"/proc/{server.process.pid}/status").read_text()
                    result[label] = round(int(status.split("VmHWM:")[1].split()[0]) / 1024)
    finally:
        old.terminate()
        old.wait()
        shutil.rmtree(work, ignore_errors=True)
    scenarios = {name: {**runs[0], **{key: round(float(np.median([r[key] for r in runs])), 2)
                                      for key in ("p50_ms", "p95_ms", "p99_ms", "requests_per_second")},
                        "requests": sum(r["requests"] for r in runs), "errors": sum(r["errors"] for r in runs),
                        "rounds": runs} for name, runs in rounds.items()}
    result["scenarios"] = scenarios
    summary = {"rerank_p99_ms": scenarios["rerank_c1"]["p99_ms"], "search_p99_ms": scenarios["search_c1"]["p99_ms"],
               "old_rerank_p99_ms": scenarios["old_rerank_c1"]["p99_ms"],
               "rerank_speedup_p99_c1": round(scenarios["old_rerank_c1"]["p99_ms"] / scenarios["rerank_c1"]["p99_ms"], 1),
               "rerank_speedup_p50_c1": round(scenarios["old_rerank_c1"]["p50_ms"] / scenarios["rerank_c1"]["p50_ms"], 1),
               "rerank_p99_ms_c8": scenarios["rerank_c8"]["p99_ms"], "search_p99_ms_c8": scenarios["search_c8"]["p99_ms"],
               "old_rerank_p99_ms_c8": scenarios["old_rerank_c8"]["p99_ms"], "catalog_vectors": count,
               "index_kind": result["index_build"]["kind"], "index_build_seconds": result["index_build"]["build_seconds"],
               "index_build_peak_rss_mb": result["index_build"]["peak_rss_mb"]}
    for name, scenario in scenarios.items():
        if name.startswith("search_nprobe"):
            base, concurrency = name.rsplit("_c", 1)
            summary[f"{base}_p99_ms" + ("" if concurrency == "1" else f"_c{concurrency}")] = scenario["p99_ms"]
    result["summary"] = summary
    print(json.dumps(summary))
    if not args.quick or args.out != parser.get_default("out"):
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
