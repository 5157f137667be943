"""Paired comparison of screened recipes on the validation split.

Each screen run saves its kept state's validation logits (``.searchtune/recipes/screen_scores``);
this script puts them side by side with the untuned cosine and the lexical baseline and
writes each one's query-grouped and pooled AUC, and every recipe's paired difference to
CANDIDATE with its query-bootstrap interval (``ml.stats``), to
``bench/results/recipes_compare.json``. Paired intervals are much narrower than the gap
between two unpaired intervals, which is what screening needs.

    OMP_NUM_THREADS=1 .venv/bin/python bench/recipes/compare.py CANDIDATE
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
from common import CACHE, metrics, splits, untuned_vectors, write_result

from searchtune.ml import lexical


def main() -> None:
    candidate = sys.argv[1]
    data = splits()
    validation = data["validation"]
    scores = {path.stem: np.load(path) for path in sorted((CACHE / "screen_scores").glob("*.npy"))}
    if candidate not in scores:
        sys.exit(f"no saved scores for {candidate!r}; have {sorted(scores)}")
    vectors = untuned_vectors(pd.concat([validation["query"], validation["product_text"]]))
    scores["untuned"] = np.array([float(vectors[q] @ vectors[t]) for q, t in zip(validation["query"], validation["product_text"],
                                                                                  strict=True)])
    vectorizer = lexical.fit_tfidf(pd.concat([data["train"]["query"], data["train"]["product_text"]]))
    scores["lexical"] = lexical.tfidf_cosine(vectorizer, validation["query"].tolist(), validation["product_text"].tolist())
    result = metrics(validation, scores, candidate)
    for name, values in sorted(result["models"].items(), key=lambda kv: -kv[1]["gauc"]["value"]):
        line = f"{name:32s} gauc {values['gauc']['value']:.4f}  roc_auc {values['roc_auc']['value']:.4f}"
        difference = result["differences"].get(f"{candidate} - {name}", {}).get("gauc")
        if difference:
            line += f"   {candidate} - it: gauc {difference['difference']:+.4f} [{difference['low']:+.4f}, {difference['high']:+.4f}]"
        print(line)
    write_result("compare", {"what": "validation split: saved screen scores, untuned cosine, lexical baseline; paired differences",
                             "candidate": candidate, "validation": result})


if __name__ == "__main__":
    main()
