"""How noisy are Home Depot's within-query labels? Near-identical products of one query, compared.

Within a query, take every pair of products whose titles are near-identical (word TF-IDF
cosine >= THRESHOLD: the same product line in another size, pack or colour, e.g.
"Everbilt #11 x 1-1/2 in. Electro-Galvanized Roofing Nail (1 lb.-Pack)" vs "(30 lb.-Pack)").
No text model can order such a pair by anything but the few words that differ; if their
labels differ about as often as two random products of the query, most within-query label
differences are rater noise, and the query-grouped AUC any model can reach is capped well
below 1.

    OMP_NUM_THREADS=1 .venv/bin/python bench/recipes/label_noise.py
"""

from __future__ import annotations

import numpy as np
from common import splits, write_result
from sklearn.feature_extraction.text import TfidfVectorizer

THRESHOLDS = (0.7, 0.8, 0.9)


def main() -> None:
    train = splits()["train"]
    vectorizer = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b", sublinear_tf=True).fit(train["product_text"])
    vectors = vectorizer.transform(train["product_text"])
    similar = {t: [] for t in THRESHOLDS}  # (label differs, grade gap) per near-identical pair
    all_pairs = []
    for _, rows in train.groupby("query_group").indices.items():
        if len(rows) < 2:
            continue
        cos = (vectors[rows] @ vectors[rows].T).toarray()
        labels, grades = train["label"].to_numpy()[rows], train["grade"].to_numpy()[rows]
        i, j = np.triu_indices(len(rows), 1)
        differs = labels[i] != labels[j]
        gaps = np.abs(grades[i] - grades[j])
        all_pairs.append(np.column_stack([differs, gaps]))
        for t in THRESHOLDS:
            keep = cos[i, j] >= t
            similar[t].append(np.column_stack([differs[keep], gaps[keep]]))
    everything = np.vstack(all_pairs)
    result = {"all_within_query_pairs": {"pairs": len(everything), "labels_differ": round(float(everything[:, 0].mean()), 4),
                                         "mean_grade_gap": round(float(everything[:, 1].mean()), 4)}}
    for t in THRESHOLDS:
        pairs = np.vstack(similar[t])
        result[f"title_cosine_at_least_{t}"] = {"pairs": len(pairs), "labels_differ": round(float(pairs[:, 0].mean()), 4),
                                                "mean_grade_gap": round(float(pairs[:, 1].mean()), 4)}
    for name, values in result.items():
        print(name, values)
    write_result("label_noise", {
        "what": "train split: pairs of products of the same query; how often their 0/1 labels (relevance >= 2.5) differ, "
                "for all pairs and for pairs with near-identical titles (word TF-IDF cosine >= threshold)",
        "split": "train", "pairs": result,
    })


if __name__ == "__main__":
    main()
