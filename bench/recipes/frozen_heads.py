"""Screen 2 (no encoder training): richer heads on the *untuned* embeddings, fitted on the train split.

A bi-encoder head can hold more than ``scale*cos + bias`` and keep the product side
precomputable, as long as the logit stays a dot product of a query-side and a
product-side vector plus per-side terms:

* ``query_prior``: ``w_q . q`` (a per-query bias: how good this query's results tend to be;
  it cannot change the order within a query, only the pooled AUC and calibration);
* ``product_prior``: ``w_p . p`` (a per-product bias: precomputable, and it does reorder
  within a query);
* ``diagonal``: ``sum_k d_k q_k p_k`` = ``(d * q) . p`` (a learned weighting of the cosine's
  dimensions, still one dot product);
* ``char_tfidf``: the lexical score (``ml.lexical``) of the hybrid head.

Each head is a logistic regression on those features of the frozen untuned embeddings,
fitted on the train split and scored on the validation split: what a head alone can do,
before any encoder training. The between-query ceiling (pooled AUC from each validation
query's true positive rate) is in ``recipes_lexical_fusion.json``: 0.846.

    OMP_NUM_THREADS=1 .venv/bin/python bench/recipes/frozen_heads.py
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from common import metrics, splits, summary_line, untuned_vectors, write_result
from sklearn.linear_model import LogisticRegression

from searchtune.ml import lexical


def blocks(frame: pd.DataFrame, vectors: dict, vectorizer) -> dict[str, np.ndarray]:
    q = np.stack([vectors[s] for s in frame["query"]])
    p = np.stack([vectors[s] for s in frame["product_text"]])
    return {
        "cosine": (q * p).sum(1, keepdims=True),
        "char_tfidf": lexical.tfidf_cosine(vectorizer, frame["query"].tolist(), frame["product_text"].tolist())[:, None],
        "query_prior": q, "product_prior": p, "diagonal": q * p,
    }


HEADS = {
    "cosine": ["cosine"],
    "cosine+char_tfidf": ["cosine", "char_tfidf"],
    "cosine+query_prior": ["cosine", "query_prior"],
    "cosine+product_prior": ["cosine", "product_prior"],
    "cosine+diagonal": ["cosine", "diagonal"],
    "cosine+char_tfidf+query_prior+product_prior": ["cosine", "char_tfidf", "query_prior", "product_prior"],
    "all": ["cosine", "char_tfidf", "query_prior", "product_prior", "diagonal"],
}


def main() -> None:
    started = time.time()
    data = splits()
    train, validation = data["train"], data["validation"]
    vectors = untuned_vectors(pd.concat([f[c] for f in (train, validation) for c in ("query", "product_text")]))
    vectorizer = lexical.fit_tfidf(pd.concat([train["query"], train["product_text"]]))
    train_blocks, valid_blocks = blocks(train, vectors, vectorizer), blocks(validation, vectors, vectorizer)
    print(f"features in {time.time() - started:.0f} s", flush=True)
    scores = {}
    for name, parts in HEADS.items():
        x_train = np.hstack([train_blocks[p] for p in parts])
        x_valid = np.hstack([valid_blocks[p] for p in parts])
        fit = LogisticRegression(C=1.0, max_iter=2000).fit(x_train, train["label"])
        scores[name] = fit.decision_function(x_valid)
        print(name, f"{time.time() - started:.0f} s", flush=True)
    result = metrics(validation, scores, candidate="all")
    for name in scores:
        print(summary_line(name, result), flush=True)
    write_result("frozen_heads", {
        "what": "validation split: logistic-regression heads on frozen untuned embeddings (fitted on the train split)",
        "heads": HEADS, "split": "validation", "validation": result, "seconds": round(time.time() - started, 1),
    })


if __name__ == "__main__":
    main()
