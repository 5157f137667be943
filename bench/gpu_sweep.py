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

import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from searchtune import logs
from searchtune.ml import batching, modeling  # noqa: E402
from searchtune.steps import evaluate, finetune, ingest


def parse(value: str, kind):
    if kind in (bool, "bool"):
        return value.lower() in ("1", "true", "yes")
    if kind in (int, "int"):
        return int(value)
    if kind in (float, "float"):
        return float(value)
    return value


def main() -> int:
    logs.setup()
    base, splits, tokenized, name, *pairs = sys.argv[1:]
    types = {f.name: f.type for f in dataclasses.fields(finetune.TrainConfig)}
    params = {k: parse(v, types[k]) for k, v in (p.split("=", 1) for p in pairs)}
    config = finetune.TrainConfig(base_model=base, **params)
    started = time.time()
    trained = finetune.finetune(tokenized, f"/tmp/model_{name}", config)
    model, tokenizer, model_config = modeling.load_trained_model(f"/tmp/model_{name}")
    model.to(batching.pick_device())
    test = ingest.read_split(splits, "test")
    metrics = evaluate.ranking_metrics(test, evaluate.score_frame(model, tokenizer, model_config["architecture"], 64, test))
    print(json.dumps({"name": name, "config": params, "test": metrics, "epochs": trained["epochs"],
                      "best_epoch": trained["best_epoch"], "wall_seconds": round(time.time() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
