"""Screen 1 (no training): how much do lexical signals add to the untuned bi-encoder's cosine?

On the validation split, each signal alone and logistic-regression fusions fitted on the
train split: the untuned cosine, character TF-IDF cosine (``ml.lexical``, the gate's
lexical baseline), word TF-IDF cosine, BM25 of the query against the title, and the share
of query words found in the title. A fusion of the untuned cosine with one lexical
feature is the "hybrid head" (``logit = a*cos + b*lexical + c``) with a frozen encoder:
a lower bound on what training the head with the encoder can do. Also: the pooled AUC a
score gets from knowing each validation query's positive rate exactly (between-query
ceiling: pooled AUC rewards ranking queries, which query-grouped AUC ignores).

    OMP_NUM_THREADS=1 .venv/bin/python bench/recipes/lexical_fusion.py
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from common import metrics, pair_cosines, splits, summary_line, write_result
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from searchtune.ml import lexical, modeling

WORDS = r"(?u)\b\w+\b"  # keep one-character tokens: sizes and numbers ("1", "x") matter here


def word_tfidf_cosine(train: pd.DataFrame, frame: pd.DataFrame) -> np.ndarray:
    vectorizer = TfidfVectorizer(token_pattern=WORDS, sublinear_tf=True, min_df=2, dtype=np.float32)
    vectorizer.fit(pd.concat([train["query"], train["product_text"]]))
    return lexical.tfidf_cosine(vectorizer, frame["query"].tolist(), frame["product_text"].tolist())


def bm25(train: pd.DataFrame, frame: pd.DataFrame, k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """BM25 of each query against its title; document statistics from the train split's distinct titles."""
    counter = CountVectorizer(token_pattern=WORDS, dtype=np.float32)
    corpus = counter.fit_transform(train["product_text"].drop_duplicates())
    df = np.asarray((corpus > 0).sum(0)).ravel()
    idf = np.log1p((corpus.shape[0] - df + 0.5) / (df + 0.5)).astype(np.float32)
    average_length = corpus.sum() / corpus.shape[0]
    text_codes, texts = pd.factorize(frame["product_text"])
    query_codes, queries = pd.factorize(frame["query"])
    tf = counter.transform(texts).tocsr()
    lengths = np.asarray(tf.sum(1)).ravel()
    rows = np.repeat(np.arange(tf.shape[0]), np.diff(tf.indptr))
    tf.data = idf[tf.indices] * tf.data * (k1 + 1) / (tf.data + k1 * (1 - b + b * lengths[rows] / average_length))
    query_terms = (counter.transform(queries) > 0).astype(np.float32)
    return np.asarray(query_terms[query_codes].multiply(tf[text_codes]).sum(1)).ravel()


def query_word_coverage(frame: pd.DataFrame) -> np.ndarray:
    """Share of the query's words (lower-cased, word characters) that occur in the title."""
    analyze = CountVectorizer(token_pattern=WORDS).build_analyzer()
    out = np.empty(len(frame))
    for i, (query, text) in enumerate(zip(frame["query"], frame["product_text"], strict=True)):
        words, title = set(analyze(query)), set(analyze(text))
        out[i] = len(words & title) / max(len(words), 1)
    return out


def features(model, tokenizer, train: pd.DataFrame, frame: pd.DataFrame, char_vectorizer) -> pd.DataFrame:
    return pd.DataFrame({
        "untuned_cosine": pair_cosines(model, tokenizer, frame),
        "char_tfidf": lexical.tfidf_cosine(char_vectorizer, frame["query"].tolist(), frame["product_text"].tolist()),
        "word_tfidf": word_tfidf_cosine(train, frame),
        "bm25": bm25(train, frame),
        "query_word_coverage": query_word_coverage(frame),
    })


def main() -> None:
    started = time.time()
    data = splits()
    train, validation = data["train"], data["validation"]
    from transformers import AutoModel

    base = modeling.resolve_base_model("")
    model = modeling.BiEncoder(AutoModel.from_pretrained(base))
    tokenizer = modeling.load_tokenizer(base)
    char_vectorizer = lexical.fit_tfidf(pd.concat([train["query"], train["product_text"]]))
    train_x = features(model, tokenizer, train, train, char_vectorizer)
    valid_x = features(model, tokenizer, train, validation, char_vectorizer)
    print(f"features in {time.time() - started:.0f} s", flush=True)

    scores = {name: valid_x[name].to_numpy() for name in valid_x}
    fusions = {
        "fusion_cosine_char_tfidf": ["untuned_cosine", "char_tfidf"],
        "fusion_cosine_bm25": ["untuned_cosine", "bm25"],
        "fusion_cosine_all_lexical": list(valid_x.columns),
        "fusion_lexical_only": ["char_tfidf", "word_tfidf", "bm25", "query_word_coverage"],
    }
    coefficients = {}
    for name, columns in fusions.items():
        scaler = StandardScaler().fit(train_x[columns])
        fit = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(train_x[columns]), train["label"])
        scores[name] = fit.decision_function(scaler.transform(valid_x[columns]))
        coefficients[name] = dict(zip(columns, np.round(fit.coef_[0], 4).tolist(), strict=True))
    # The between-query ceiling: each row scored with its own query's validation positive rate.
    scores["oracle_query_positive_rate"] = validation.groupby("query_group")["label"].transform("mean").to_numpy()
    scores["random"] = np.random.default_rng(0).random(len(validation))
    result = metrics(validation, scores, candidate="fusion_cosine_char_tfidf")
    for name in scores:
        print(summary_line(name, result), flush=True)
    write_result("lexical_fusion", {
        "what": "validation split, no training: untuned cosine, lexical signals, and logistic-regression fusions fitted on the train split",
        "split": "validation", "fusion_coefficients_standardised": coefficients, "validation": result,
        "seconds": round(time.time() - started, 1),
    })


if __name__ == "__main__":
    main()
