"""The chosen recipe at full size, judged once on the Home Depot test split.

Trains a recipe from ``screen.RECIPES`` (its settings, but all training queries and up to
``EPOCHS`` epochs, scored on the validation split ``evaluations_per_epoch`` times per epoch
with the best query-grouped AUC kept: early stopping on validation, never on test), then
scores the test split with the candidate, the untuned base model (its cosine), the lexical
baseline (``ml.lexical``: character TF-IDF cosine fitted on the train split, the gate's
baseline) and random scores, and writes ``bench/results/recipes_final_<recipe>.json``:
pooled ROC AUC, query-grouped AUC and nDCG@10 (graded gains) with query-bootstrap intervals
and the candidate's paired differences (``ml.stats.compute_statistics``), and the time.

    OMP_NUM_THREADS=1 .venv/bin/python bench/recipes/final.py RECIPE [EPOCHS] [EVALUATIONS_PER_EPOCH]
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
import pandas as pd
from common import metrics, splits, summary_line, untuned_vectors, write_result
from harness import result_record, train
from screen import RECIPES

from searchtune.ml import lexical


def main() -> None:
    name = sys.argv[1]
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    evaluations = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    screened = RECIPES[name]
    recipe = dataclasses.replace(screened, name=f"{name}_full", params=screened.params.model_copy(update={"epochs": epochs}),
                                 train_queries=1.0, evaluations_per_epoch=evaluations)
    data = splits()
    started = time.time()
    trained = train(recipe, data)
    train_wall = time.time() - started
    test = data["test"]
    vectors = untuned_vectors(pd.concat([test["query"], test["product_text"]]))
    base = np.array([float(vectors[q] @ vectors[t]) for q, t in zip(test["query"], test["product_text"], strict=True)])
    vectorizer = lexical.fit_tfidf(pd.concat([data["train"]["query"], data["train"]["product_text"]]))
    scores = {
        "candidate": trained.scores("test"),
        "base": base,
        "lexical": lexical.tfidf_cosine(vectorizer, test["query"].tolist(), test["product_text"].tolist()),
        "random": np.random.default_rng(0).random(len(test)),
    }
    result = metrics(test, scores, "candidate")
    for model in scores:
        print(summary_line(model, result), flush=True)
    write_result(f"final_{name}", {
        "what": f"recipe {name!r} on all {len(data['train'])} training rows, up to {epochs} epochs, best validation query-grouped "
                "AUC kept; test split scored once: candidate, untuned base cosine, character TF-IDF cosine, random",
        "run": result_record(recipe, trained.history, len(data["train"])),
        "train_wall_seconds": round(train_wall, 1), "test": result,
    })


if __name__ == "__main__":
    main()
