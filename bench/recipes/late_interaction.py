"""Screen 4 (no training): token-level late interaction (ColBERT-style MaxSim) with the untuned encoder.

The bi-encoder's mean-pooled cosine blurs "does the title have *each* thing the query asks
for" (the product type, the size, the material), which is what separates the products of
one query. MaxSim keeps token vectors: for each query token, the best cosine with any
title token, averaged over the query's tokens. The product side stays precomputable (a
matrix of token vectors per product instead of one vector). Scored on the validation
split, alone and fused with the pooled cosine and the character TF-IDF (a logistic
regression fitted on a seeded 25% of the training queries).

    OMP_NUM_THREADS=1 .venv/bin/python bench/recipes/late_interaction.py
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from common import metrics, splits, summary_line, untuned_vectors, write_result
from harness import Texts, subsample_queries
from sklearn.linear_model import LogisticRegression

from searchtune.ml import lexical, modeling


@torch.no_grad()
def token_vectors(encoder, texts: Texts, strings: list[str], batch_size: int = 128) -> dict[str, torch.Tensor]:
    """Unit token vectors of each string without [CLS]/[SEP] (or with them for a one-token string)."""
    out = {}
    for start in range(0, len(strings), batch_size):
        chunk = strings[start:start + batch_size]
        ids, mask = texts.batch(chunk)
        hidden = torch.nn.functional.normalize(encoder(input_ids=ids, attention_mask=mask).last_hidden_state, dim=-1)
        for i, s in enumerate(chunk):
            n = int(mask[i].sum())
            out[s] = hidden[i, 1:n - 1] if n > 2 else hidden[i, :n]
    return out


def maxsim(frame: pd.DataFrame, vectors: dict[str, torch.Tensor]) -> np.ndarray:
    return np.array([float((vectors[q] @ vectors[t].T).amax(1).mean()) for q, t in zip(frame["query"], frame["product_text"], strict=True)])


def main() -> None:
    started = time.time()
    data = splits()
    train = subsample_queries(data["train"], 0.25, 13)
    validation = data["validation"]
    from transformers import AutoModel

    base = modeling.resolve_base_model("")
    encoder = AutoModel.from_pretrained(base).eval()
    frames = {"train": train, "validation": validation}
    texts = Texts(modeling.load_tokenizer(base), pd.concat([f[c] for f in frames.values() for c in ("query", "product_text")]))
    pooled = untuned_vectors(pd.concat([f[c] for f in frames.values() for c in ("query", "product_text")]))
    vectorizer = lexical.fit_tfidf(pd.concat([data["train"]["query"], data["train"]["product_text"]]))
    features = {}
    for name, frame in frames.items():
        tokens = token_vectors(encoder, texts, list(dict.fromkeys(pd.concat([frame["query"], frame["product_text"]]))))
        features[name] = pd.DataFrame({
            "maxsim": maxsim(frame, tokens),
            "cosine": [float(pooled[q] @ pooled[t]) for q, t in zip(frame["query"], frame["product_text"], strict=True)],
            "char_tfidf": lexical.tfidf_cosine(vectorizer, frame["query"].tolist(), frame["product_text"].tolist()),
        })
        print(name, f"{time.time() - started:.0f} s", flush=True)
    scores = {"maxsim": features["validation"]["maxsim"].to_numpy(), "cosine": features["validation"]["cosine"].to_numpy()}
    fusions = {"maxsim+cosine": ["maxsim", "cosine"], "maxsim+cosine+char_tfidf": ["maxsim", "cosine", "char_tfidf"]}
    coefficients = {}
    for name, columns in fusions.items():
        fit = LogisticRegression(max_iter=1000).fit(features["train"][columns], train["label"])
        scores[name] = fit.decision_function(features["validation"][columns])
        coefficients[name] = dict(zip(columns, np.round(fit.coef_[0], 4).tolist(), strict=True))
    result = metrics(validation, scores, "maxsim")
    for name in scores:
        print(summary_line(name, result), flush=True)
    write_result("late_interaction", {
        "what": "validation split, untuned encoder: token MaxSim, pooled cosine, and logistic fusions (fitted on 25% of train queries)",
        "split": "validation", "fusion_coefficients": coefficients, "validation": result, "seconds": round(time.time() - started, 1),
    })


if __name__ == "__main__":
    main()
