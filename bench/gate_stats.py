"""The gate's statistics at scale: 1M test rows / 100k queries, 4 models, on one core.

Generates a seeded synthetic test set (graded gains, 2-18 rows per query, per-query
effects) with a candidate, an untuned base, a production model and a lexical baseline,
then times ``searchtune.ml.stats.compute_statistics`` (every metric, every interval, the
three differences, 1,000 resamples) over several rounds and reports the median. It also
measures what the exact weighted pooled bootstrap would cost at this size (one chunk,
extrapolated) and how far the first-order (clustered DeLong) intervals are from the exact
ones on a 50k-row slice. With ``--home-depot`` it adds a sanity run on the real Home
Depot judgements (char vs word TF-IDF cosine, test = 20% of queries by hash).

    OMP_NUM_THREADS=1 taskset -c 0 python bench/gate_stats.py [--rounds 3] [--home-depot]

Prints one JSON line and writes bench/results/gate_stats.json (with the command).
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402 - the thread limits above must precede numpy's import
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from searchtune.ml.ranking import PooledOrder, QueryLayout, weighted_pooled_auc_ap  # noqa: E402
from searchtune.ml.stats import compute_statistics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOME_DEPOT = ROOT.parent / "shared" / "data" / "home_depot_search_relevance" / "train.parquet"
LOGITS = {"candidate", "base", "production"}


def synthetic(rows: int, queries: int, seed: int) -> dict:
    """Query ids, labels, graded gains and four models' scores (seeded)."""
    rng = np.random.default_rng(seed)
    # Exactly `rows` rows and `queries` queries, 2 or more rows each, lengths varying ~2-18.
    share = rng.integers(0, 17, queries) + 0.5
    query = np.repeat(np.arange(queries), 2 + rng.multinomial(rows - 2 * queries, share / share.sum()))
    n = len(query)
    difficulty = rng.normal(0, 1, queries)[query]
    grade = np.clip(np.round(1 + rng.normal(0, 0.8, n) + 0.8 * (rng.random(n) < 1 / (1 + np.exp(-difficulty)))), 0, 3)
    label = (grade >= 2).astype(np.int8)
    relevance = grade + 0.5 * rng.normal(0, 1, queries)[query]
    scores = {
        "candidate": 0.9 * relevance + rng.normal(0, 1.0, n),
        "base": 0.6 * relevance + rng.normal(0, 1.0, n),
        "production": 0.85 * relevance + rng.normal(0, 1.0, n),
        # A cosine in [0, 1] with many exact ties (rounded), like a sparse lexical match.
        "lexical": np.round(np.clip(0.2 + 0.1 * relevance + 0.15 * rng.normal(0, 1, n), 0, 1), 2),
    }
    return {"query": query, "label": label, "gains": grade, "scores": scores}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--home-depot", action="store_true", help="also run on the real Home Depot judgements")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write bench/results/gate_stats.json")
    args = parser.parse_args()
    with threadpool_limits(1):
        data = synthetic(args.rows, args.queries, seed=0)
        run = {"query_ids": data["query"], "labels": data["label"], "scores": data["scores"], "gains": data["gains"],
               "logit_models": LOGITS, "resamples": args.resamples}
        seconds, result = [], None
        for _ in range(args.rounds):
            started = time.perf_counter()
            result = compute_statistics(**run)
            seconds.append(time.perf_counter() - started)
        stats_peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        exact = exact_pooled_cost(data, args.resamples)
        agreement = pooled_agreement(data)
        report = {
            "rows": result.counts.rows, "queries": result.counts.queries, "models": len(data["scores"]),
            "resamples": args.resamples, "seconds": round(statistics.median(seconds), 2),
            "seconds_rounds": [round(s, 2) for s in seconds], "target_seconds": 30,
            "peak_rss_mib": round(stats_peak_rss, 1),
            "peak_rss_note": "process peak after data generation and the timed rounds, before the exact-cost probe",
            "method": result.method, "exact_pooled": exact, "pooled_first_order_vs_exact": agreement,
            "counts": result.counts.model_dump(),
            "candidate": {m: e.model_dump() for m, e in result.models["candidate"].items()},
            "candidate_minus_base": {m: d.model_dump() for m, d in result.comparisons["base"].items()},
            "random_floor": {m: info.random_floor for m, info in result.metrics.items()},
        }
        if args.home_depot:
            report["home_depot"] = home_depot()
    report.update(command="OMP_NUM_THREADS=1 taskset -c 0 python bench/gate_stats.py " + " ".join(sys.argv[1:]),
                  machine=f"{os.cpu_count()} CPU cores shared with other users, 1 thread", numpy=np.__version__)
    print(json.dumps({k: report[k] for k in ("rows", "queries", "resamples", "seconds", "peak_rss_mib")}))
    if not args.no_write:
        (ROOT / "bench" / "results" / "gate_stats.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


def exact_pooled_cost(data: dict, resamples: int, chunk: int = 4) -> dict:
    """Seconds the exact weighted pooled ROC/PR AUC bootstrap would take here, from one chunk."""
    layout = QueryLayout.build(data["query"], data["label"], data["gains"])
    weights = np.random.default_rng(1).poisson(1.0, size=(chunk, layout.n_queries)).astype(np.float64)
    per_model = []
    for scores in data["scores"].values():
        order = PooledOrder.of(layout, scores)
        started = time.perf_counter()
        weighted_pooled_auc_ap(order, weights)
        per_model.append((time.perf_counter() - started) * resamples / chunk)
    return {"measured_resamples_per_model": chunk, "extrapolated_seconds_all_models": round(sum(per_model), 1)}


def pooled_agreement(data: dict, rows: int = 50_000) -> dict:
    """Interval half-widths of pooled ROC/PR AUC, first-order vs exact, on the first rows."""
    keep = slice(0, rows)
    run = {"query_ids": data["query"][keep], "labels": data["label"][keep], "gains": data["gains"][keep],
           "scores": {name: s[keep] for name, s in data["scores"].items()}}
    out = {"rows": rows}
    for method in ("linearized", "exact"):
        started = time.perf_counter()
        result = compute_statistics(**run, pooled_method=method)
        out[f"{method}_seconds"] = round(time.perf_counter() - started, 2)
        for metric in ("roc_auc", "pr_auc"):
            estimate, diff = result.models["candidate"][metric], result.comparisons["base"][metric]
            out[f"{method}_{metric}_candidate_half_width"] = round((estimate.high - estimate.low) / 2, 5)
            out[f"{method}_{metric}_minus_base_half_width"] = round((diff.high - diff.low) / 2, 5)
    return out


def home_depot() -> dict:
    """Char vs word TF-IDF cosine on the real judgements: shapes, ties and grades as they come."""
    import pandas as pd

    from searchtune.ml.lexical import fit_tfidf, tfidf_cosine

    frame = pd.read_parquet(HOME_DEPOT, columns=["search_term", "product_title", "relevance"])
    test = frame["search_term"].map(lambda q: zlib.crc32(q.strip().lower().encode()) % 10 < 2).to_numpy()
    train, held = frame[~test], frame[test]
    corpus = pd.concat([train["search_term"], train["product_title"]]).tolist()
    started = time.perf_counter()
    char = tfidf_cosine(fit_tfidf(corpus), held["search_term"].tolist(), held["product_title"].tolist())
    lexical_seconds = time.perf_counter() - started
    word = tfidf_cosine(fit_tfidf(corpus, analyzer="word", ngram_range=(1, 1), min_df=1),
                        held["search_term"].tolist(), held["product_title"].tolist())
    grade = held["relevance"].to_numpy()
    result = compute_statistics(held["search_term"].str.strip().str.lower().to_numpy(), (grade >= 2.5).astype(int),
                                {"candidate": char, "lexical": word}, gains=grade - 1.0)
    return {
        "data": "../shared/data/home_depot_search_relevance/train.parquet, test = 20% of queries by crc32; "
                "label relevance >= 2.5, gains relevance - 1; candidate = char TF-IDF cosine, lexical = word TF-IDF cosine",
        "char_tfidf_scoring_seconds": round(lexical_seconds, 2), "stats_seconds": result.seconds,
        "counts": result.counts.model_dump(),
        "char_tfidf": {m: e.model_dump() for m, e in result.models["candidate"].items()},
        "word_tfidf": {m: e.model_dump() for m, e in result.models["lexical"].items()},
        "char_minus_word": {m: d.model_dump() for m, d in result.comparisons["lexical"].items()},
        "random_floor": {m: info.random_floor for m, info in result.metrics.items()},
    }


if __name__ == "__main__":
    raise SystemExit(main())
