"""Home Depot sweep on a GPU: one training config per process, test metrics at the end.

How the committed results (bench/results/gpu_home_depot_sweep.json) were made, on a lent
NVIDIA H100 (torch 2.11 cu130 there), with the Home Depot splits from the ingest step and
the bundled all-MiniLM-L6-v2 weights copied to the machine (fp16 for the transfer, cast
back to fp32 before use):

    python bench/gpu_sweep.py BASE_DIR SPLITS_DIR TOKENIZED_DIR NAME key=value ...
    e.g. python bench/gpu_sweep.py /tmp/minilm splits tok default learning_rate=5e-4 epochs=3

Several configs ran at once as separate processes (the GPU was far from busy: the trainer's
Python loop, not the GPU, limits a 22M-parameter model at batch 32).
"""

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from searchtune import logs, params  # noqa: E402
from searchtune.ml import batching, modeling, scoring  # noqa: E402
from searchtune.ml.stats import compute_statistics  # noqa: E402
from searchtune.params import TrainParams  # noqa: E402
from searchtune.steps import finetune, splits  # noqa: E402


def main() -> int:
    logs.setup()
    base, splits_dir, tokenized, name, *pairs = sys.argv[1:]
    values = dict(p.split("=", 1) for p in pairs)
    config = params.parse(TrainParams, {"base_model": base, **values})  # pydantic types the text
    started = time.time()
    trained = finetune.finetune(tokenized, f"/tmp/model_{name}", config)
    model, tokenizer, record = modeling.load_trained_model(f"/tmp/model_{name}")
    model.to(batching.pick_device())
    test = splits.read_split(splits_dir, "test")
    scores = scoring.score_frame(model, tokenizer, record.architecture, 64, test)
    test_metrics = compute_statistics(test["query_group"], test["label"], {"candidate": scores}, gains=test["target"],
                                      logit_models={"candidate"}).model_dump()["models"]["candidate"]
    print(json.dumps({"name": name, "config": values, "test": test_metrics, "epochs": [e.model_dump() for e in trained.epochs],
                      "best_epoch": trained.best_epoch, "wall_seconds": round(time.time() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
