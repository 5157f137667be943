"""Does what the bundled sample teaches hold on real data? A sample-trained model on Home Depot's test split.

Takes the candidate of a default `searchtune run` (trained on the bundled synthetic sample
alone; by default the newest run under .searchtune/runs) and scores it and the untuned base
model on the test split of Home Depot's judgements - the split `bench/home_depot.py`'s run
uses: the ingest step on train.parquet with the README's flags (product_title as the product
text, relevance >= 2.5 positive, the default query-hash fractions). Scoring, metrics and the
query-clustered bootstrap are the evaluate step's own (``steps.evaluate.score_models``,
``ml.stats.compute_statistics``), so the numbers mean what a run's numbers mean: pooled ROC
AUC and query-grouped AUC with 95 % intervals, and the candidate's paired differences.
The target (issue 20): the candidate is not worse than the untuned base, on both metrics.

    OMP_NUM_THREADS=2 python bench/sample_transfer.py [--run-dir .searchtune/runs/<run id>]

Needs ../shared/data/home_depot_search_relevance/train.parquet (never copied into the repo).
Writes bench/results/sample_transfer.json.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from searchtune.ml.stats import BASE, CANDIDATE, LEXICAL, compute_statistics  # noqa: E402
from searchtune.params import IngestParams  # noqa: E402
from searchtune.steps import ingest, splits  # noqa: E402
from searchtune.steps.evaluate import Production, score_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "home_depot_search_relevance" / "train.parquet"
RESULTS = ROOT / "bench" / "results" / "sample_transfer.json"
METRICS = ("roc_auc", "gauc", "ndcg_at_10")


def newest_run(runs: Path) -> Path:
    folders = [p for p in runs.iterdir() if (p / "model").is_dir()] if runs.is_dir() else []
    if not folders:
        raise SystemExit(f"no run with a model under {runs}: run `searchtune run` first, or pass --run-dir")
    return max(folders, key=lambda p: p.stat().st_mtime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None, help="a run's folder (default: the newest under .searchtune/runs)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not DATA.exists():
        print(f"{DATA} is missing: this benchmark needs the shared Home Depot data", file=sys.stderr)
        return 2
    run_dir = args.run_dir or newest_run(ROOT / ".searchtune" / "runs")
    started = time.time()
    with tempfile.TemporaryDirectory() as splits_dir:
        # The README's Home Depot command's ingest parameters (bench/home_depot.py).
        ingest.ingest(splits_dir, IngestParams(data=str(DATA), text_columns="product_title", positive_threshold=2.5))
        test = splits.read_split(splits_dir, "test")
        scores, unscored, model_record = score_models(splits_dir, str(run_dir / "model"), Production(""), test)
    statistics = compute_statistics(test["query_group"].to_numpy(), test["label"].to_numpy(), scores,
                                     gains=test["target"].to_numpy(), logit_models={CANDIDATE, BASE}, unscored=unscored)
    summary = statistics.model_dump()
    models = {name: {m: summary["models"][name][m] for m in METRICS} for name in (CANDIDATE, BASE, LEXICAL)}
    differences = {name: {m: summary["comparisons"][name][m] for m in METRICS} for name in (BASE, LEXICAL)}
    not_worse = {m: differences[BASE][m]["high"] >= 0 for m in ("roc_auc", "gauc")}
    result = {
        "command": "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "unset") + " python bench/sample_transfer.py "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "what": "the candidate of a default `searchtune run` (bundled sample only) and the untuned base, scored on "
                "Home Depot's test split (ingest of train.parquet, product_title, relevance >= 2.5, default fractions)",
        "run": str(run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir),
        "model": model_record.model_dump(include={"architecture", "base_model", "lora_r", "epochs", "best_epoch",
                                                  "best_validation_auc", "training_seconds"}),
        "test": {"rows": summary["counts"]["rows"], "queries": summary["counts"]["queries"],
                 "queries_with_both_classes": summary["counts"]["queries_with_both_classes"], "method": summary["method"]},
        "metrics": models,
        "candidate_minus": differences,
        "not_worse_than_base": {m: {"met": met, "rule": "upper bound of (candidate - base) >= 0"} for m, met in not_worse.items()},
        "seconds": round(time.time() - started, 1),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, values in models.items():
        print(f"{name:10s}", "  ".join(f"{m} {v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" for m, v in values.items()))
    for name, values in differences.items():
        print(f"cand-{name:5s}", "  ".join(f"{m} {v['difference']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]"
                                         for m, v in values.items()))
    print(f"{time.time() - started:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
