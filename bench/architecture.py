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

from searchtune import logs, params
from searchtune.ml import modeling, scoring
from searchtune.ml.stats import compute_statistics
from searchtune.params import IngestParams, ModelParams, TrainParams
from searchtune.steps import finetune, ingest, splits, tokenize

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "home_depot_search_relevance" / "train.parquet"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8000)
    args = parser.parse_args()
    logs.setup()
    work = Path(tempfile.mkdtemp(prefix="searchtune-architecture-"))
    ingest.ingest(str(work / "splits"), IngestParams(data=str(DATA), text_columns="product_title"))
    test = splits.read_split(str(work / "splits"), "test")
    results = {"command": "python bench/architecture.py " + " ".join(sys.argv[1:]),
               "budget": f"{args.rows} train rows, 1 epoch, LoRA r16, learning rate 5e-4, batch 32, CPU", "test_rows": len(test)}
    for architecture in params.ARCHITECTURES:
        tokenize.tokenize(str(work / "splits"), str(work / f"tok-{architecture}"), ModelParams(architecture=architecture))
        started = time.time()
        trained = finetune.finetune(str(work / f"tok-{architecture}"), str(work / f"model-{architecture}"),
                                    TrainParams(architecture=architecture, epochs=1, max_train_rows=args.rows))
        model, tokenizer, _ = modeling.load_trained_model(str(work / f"model-{architecture}"))
        scores = scoring.score_frame(model, tokenizer, architecture, 64, test)
        results[architecture] = {"test": compute_statistics(test["query_group"], test["label"], {"candidate": scores}, gains=test["target"],
                                                                     logit_models={"candidate"}).models["candidate"], "validation_auc": trained.best_validation_auc,
                                 "seconds": round(time.time() - started, 1)}
        print(architecture, results[architecture]["test"]["roc_auc"], flush=True)
    out = ROOT / "bench" / "results" / "architecture_home_depot.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
