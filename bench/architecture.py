"""Bi-encoder vs cross-encoder on the Home Depot judgements, same budget, same test rows.

Ingests ../shared's Home Depot data (label relevance >= 2.5, the pipeline's query-hash
splits), then for each architecture tokenizes, LoRA-trains on the same 8,000 train rows for
one epoch with the pipeline's default hyper-parameters, and scores the test split. Writes
bench/results/architecture_home_depot.json. Usage:

    python bench/architecture.py [--rows 8000]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from searchtune import logs
from searchtune.ml import metrics, modeling, scoring
from searchtune.steps import finetune, ingest, tokenize

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "home_depot_search_relevance" / "train.parquet"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8000)
    args = parser.parse_args()
    logs.setup()
    work = Path(tempfile.mkdtemp(prefix="searchtune-architecture-"))
    mapping = ingest.ColumnMapping(query="search_term", text=("product_title",), label="relevance", positive_threshold=2.5)
    ingest.ingest(str(DATA), str(work / "splits"), mapping)
    test = ingest.read_split(str(work / "splits"), "test")
    results = {"command": "python bench/architecture.py " + " ".join(sys.argv[1:]),
               "budget": f"{args.rows} train rows, 1 epoch, LoRA r16, learning rate 5e-4, batch 32, CPU", "test_rows": len(test)}
    for architecture in modeling.ARCHITECTURES:
        tokenize.tokenize(str(work / "splits"), str(work / f"tok-{architecture}"), "", architecture, 64)
        started = time.time()
        trained = finetune.finetune(str(work / f"tok-{architecture}"), str(work / f"model-{architecture}"),
                                    finetune.TrainConfig(architecture=architecture, epochs=1, max_train_rows=args.rows))
        model, tokenizer, _ = modeling.load_trained_model(str(work / f"model-{architecture}"))
        scores = scoring.score_frame(model, tokenizer, architecture, 64, test)
        results[architecture] = {"test": metrics.ranking_metrics(test, scores), "validation_auc": trained["best_validation_auc"],
                                 "seconds": round(time.time() - started, 1)}
        print(architecture, results[architecture]["test"]["roc_auc"], flush=True)
    out = ROOT / "bench" / "results" / "architecture_home_depot.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
