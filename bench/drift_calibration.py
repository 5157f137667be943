"""Drift thresholds, calibrated: samples of the same traffic stay quiet, real shifts raise the alarm.

For the bundled sample and (when present) the Home Depot judgements: the queries are split at
random into two halves, ``--seeds`` times. Each pair of halves is what two training splits
of the same traffic look like (query-disjoint, as splits by query are), so no signal of
``searchtune.steps.evaluation.drift`` may reach its threshold (A/A). Then the same halves with a real
change applied to the second one:

* label rate +0.10: negatives dropped at random until the positive rate is 0.10 higher;
* label rate +0.05: the same, smaller (reported; not required to be flagged);
* category mix: the second half keeps only some categories (bundled sample: three of its
  ten; Home Depot, which has no category column: the queries naming paint, doors, lights,
  tiles or faucets).

The production model's score (prediction drift) is measured with a real scorer fitted on
the first half: the lexical baseline (character TF-IDF cosine, ``searchtune.ml.lexical``).

    OMP_NUM_THREADS=1 python bench/drift_calibration.py [--seeds 10]

Prints a summary and writes bench/results/drift_calibration.json (with the command).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from searchtune.data import sample_data
from searchtune.ml.lexical import fit_tfidf, tfidf_cosine
from searchtune.steps.evaluation import drift

ROOT = Path(__file__).resolve().parents[1]
HOME_DEPOT = ROOT.parent / "shared" / "data" / "home_depot_search_relevance" / "train.parquet"
HOME_DEPOT_CATEGORY_WORDS = ("paint", "door", "light", "tile", "faucet")


def load(name: str) -> pd.DataFrame:
    """query, product_text, label (relevance >= 2.5) and a category, as the ingest step would make them."""
    if name == "sample":
        raw = pd.read_parquet(sample_data.default_sample_path())
        text = raw["product_title"] + " | " + raw["brand"]
        category = raw["category"]
    else:
        raw = pd.read_parquet(HOME_DEPOT)
        text = raw["product_title"]
        words = raw["search_term"].str.lower().str.split()
        category = words.map(lambda ws: next((w for w in ws if w.rstrip("s") in HOME_DEPOT_CATEGORY_WORDS), "other"))
    return pd.DataFrame({"query": raw["search_term"].str.lower(), "product_text": text, "label": (raw["relevance"] >= 2.5).astype(int),
                         "category": category})


def halves(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    queries = frame["query"].unique()
    first = set(np.random.default_rng(seed).choice(queries, len(queries) // 2, replace=False))
    mask = frame["query"].isin(first)
    return frame[mask], frame[~mask]


def raise_label_rate(frame: pd.DataFrame, by: float, seed: int) -> pd.DataFrame:
    """Drop negatives at random until the positive rate is ``by`` higher."""
    positives, rate = int(frame["label"].sum()), frame["label"].mean()
    keep_negatives = int(positives / (rate + by) - positives)
    negatives = frame[frame["label"] == 0].sample(keep_negatives, random_state=seed)
    return pd.concat([frame[frame["label"] == 1], negatives])


def category_mix(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    if name == "sample":
        return frame[frame["category"].isin(["Paint", "Plumbing", "Electrical"])]
    return frame[frame["category"] != "other"]


def lexical_scorer(reference: pd.DataFrame):
    vectorizer = fit_tfidf(pd.concat([reference["query"], reference["product_text"]]))
    return lambda rows: tfidf_cosine(vectorizer, rows["query"].tolist(), rows["product_text"].tolist())


def run(name: str, seeds: int) -> dict:
    frame = load(name)
    scenarios = {"A/A": lambda half, seed: half, "label rate +0.10": lambda half, seed: raise_label_rate(half, 0.10, seed),
                 "label rate +0.05": lambda half, seed: raise_label_rate(half, 0.05, seed),
                 "category mix": lambda half, seed: category_mix(name, half)}
    out = {"rows": len(frame), "queries": int(frame["query"].nunique()), "positive_rate": round(float(frame["label"].mean()), 4)}
    for scenario, change in scenarios.items():
        flagged, ratios, signals = 0, {}, {}
        started = time.perf_counter()
        for seed in range(seeds):
            first, second = halves(frame, seed)
            measured = drift.measure(first, change(second, seed), scorer=lexical_scorer(first))
            flagged += bool(measured.drifted)
            for column in measured.distances:
                ratios.setdefault(column, []).append(measured.distances[column] / measured.thresholds[column])
                signals.setdefault(column, []).append(column in measured.drifted)
        out[scenario] = {
            "runs": seeds, "runs_flagged": flagged,
            "signals": {c: {"max_distance_over_threshold": round(max(r), 3), "median_distance_over_threshold": round(float(np.median(r)), 3),
                            "runs_flagged": int(sum(signals[c]))} for c, r in ratios.items()},
            "seconds_per_run": round((time.perf_counter() - started) / seeds, 2),
        }
        print(f"{name:7s} {scenario:17s} flagged {flagged}/{seeds}; worst signal at "
              f"{max(max(r) for r in ratios.values()):.2f} x its threshold", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    datasets = ["sample"] + (["home_depot"] if HOME_DEPOT.exists() else [])
    result = {
        "command": "OMP_NUM_THREADS=1 python " + " ".join(["bench/drift_calibration.py", *sys.argv[1:]]),
        "signals": {c: {"meaning": s.meaning, "distance": s.method, "floor": s.floor} for c, s in drift.SIGNALS.items()},
        "noise_level": f"mean + {drift.NOISE_SDS:g} sd of the distance over {drift.PERMUTATIONS} query-level reshuffles",
        "max_rows_per_side": drift.MAX_ROWS, "prediction_rows_per_side": drift.PREDICTION_ROWS,
        "machine": "2 shared CPU cores (other work running)",
        "datasets": {name: run(name, args.seeds) for name in datasets},
    }
    path = ROOT / "bench" / "results" / "drift_calibration.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
