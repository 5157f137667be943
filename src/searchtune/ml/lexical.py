"""A lexical baseline: cosine of character n-gram TF-IDF vectors of query and product text.

It answers "does the trained model beat plain string overlap?" on the same test rows.
Character n-grams within word boundaries (``char_wb``, 2-4) match spelling variants,
plurals and unit spellings ("2x4", "2 x 4 in.") that word tokens miss, which is why the
Home Depot benchmark has used them (``bench/home_depot.py``: 0.669 test ROC AUC). BM25
was not added: per-pair BM25 needs a document collection per query, the libraries on
PyPI are built for top-k retrieval over one index, and it would be a new dependency for a
reference line in a report.

The vocabulary and IDF come from a corpus the caller passes, e.g. the training split's
queries and product texts, never the test rows. Scoring dedupes the strings of each chunk
of rows, transforms them with the fitted vectorizer (rows come out L2-normalised), and
takes the row-wise dot product of two sparse matrices: memory is bounded by the chunk,
not the number of rows, and nothing is densified. Scores lie in [0, 1]; they are not
logits, so ``searchtune.ml.stats`` gives them no log loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer

from searchtune.errors import SearchtuneError

CHUNK_ROWS = 100_000


def fit_tfidf(corpus: Iterable[str], *, analyzer: str = "char_wb", ngram_range: tuple[int, int] = (2, 4),
                   min_df: int = 2) -> TfidfVectorizer:
    """Fit the TF-IDF vocabulary and IDF weights on ``corpus``.

    Args:
        corpus: texts to learn from (training queries and product texts).
        analyzer: scikit-learn analyzer: ``char_wb`` (default), ``char`` or ``word``.
        ngram_range: n-gram lengths.
        min_df: drop n-grams seen in fewer documents (typos, ids).

    Returns:
        The fitted vectorizer (sublinear TF, L2-normalised rows, lower-cased).

    Raises:
        SearchtuneError: the corpus is empty or leaves no n-gram after ``min_df``.
    """
    texts = [str(text) for text in corpus]
    if not texts:
        raise SearchtuneError("the lexical baseline needs a non-empty corpus to fit on")
    vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=ngram_range, min_df=min_df, sublinear_tf=True,
                                 dtype=np.float32)
    try:
        vectorizer.fit(texts)
    except ValueError as error:  # scikit-learn: "empty vocabulary" / "no terms remain"
        raise SearchtuneError(f"the lexical baseline could not be fitted on {len(texts)} texts: {error}") from error
    return vectorizer


def tfidf_cosine(vectorizer: TfidfVectorizer, queries: Sequence[str], texts: Sequence[str],
                 chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Cosine similarity of each (query, text) row under a fitted vectorizer.

    Args:
        vectorizer: from :func:`fit_tfidf`.
        queries: per row, the query.
        texts: per row, the product text.
        chunk_rows: rows per chunk (bounds memory; strings repeated within a chunk are
            transformed once).

    Returns:
        float64 array in [0, 1], one score per row (0 when the two share no n-gram).

    Raises:
        SearchtuneError: ``queries`` and ``texts`` differ in length, or ``chunk_rows < 1``.
    """
    if len(queries) != len(texts):
        raise SearchtuneError(f"{len(queries)} queries but {len(texts)} product texts")
    if chunk_rows < 1:
        raise SearchtuneError(f"chunk_rows must be >= 1, got {chunk_rows}")
    queries = pd.Series(queries, dtype=object).astype(str).to_numpy()
    texts = pd.Series(texts, dtype=object).astype(str).to_numpy()
    scores = np.empty(len(queries), dtype=np.float64)
    for begin in range(0, len(queries), chunk_rows):
        end = min(len(queries), begin + chunk_rows)
        query_codes, query_unique = pd.factorize(queries[begin:end])
        text_codes, text_unique = pd.factorize(texts[begin:end])
        query_vectors = vectorizer.transform(query_unique)[query_codes]
        text_vectors = vectorizer.transform(text_unique)[text_codes]
        scores[begin:end] = np.asarray(query_vectors.multiply(text_vectors).sum(axis=1)).ravel()
    return np.clip(scores, 0.0, 1.0)
