"""The lexical baseline: TF-IDF cosine per (query, product text) row, chunked, and its errors."""

from importlib import resources

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics.pairwise import cosine_similarity

from searchtune.errors import SearchtuneError
from searchtune.ml.lexical import fit_tfidf, tfidf_cosine
from searchtune.ml.stats import compute_statistics

CORPUS = ["2x4 lumber 8 ft", "pressure treated lumber", "20 amp gfci outlet", "gfci outlet white", "deck screws 3 in",
          "wood deck screws", "outlet cover plate", "treated 2x4 stud"]


def test_row_cosine_equals_dense_cosine_whatever_the_chunk_size():
    vectorizer = fit_tfidf(CORPUS)
    queries = ["2x4 lumber", "gfci outlet", "deck screws", "gfci outlet", "2x4 lumber"]
    texts = ["treated 2x4 stud", "outlet cover plate", "wood deck screws", "gfci outlet white", "outlet cover plate"]
    expected = np.diag(cosine_similarity(vectorizer.transform(queries), vectorizer.transform(texts)))
    for chunk_rows in (1, 2, 100):
        np.testing.assert_allclose(tfidf_cosine(vectorizer, queries, texts, chunk_rows=chunk_rows), expected, rtol=1e-5, atol=1e-6)


def test_spelling_variants_match_and_unrelated_text_does_not():
    vectorizer = fit_tfidf(CORPUS)
    scores = tfidf_cosine(vectorizer, ["2x4 lumber", "2x4 lumber", "2x4 lumber", "qqq"],
                          ["2x4 lumber", "2 x 4 lumbers", "gfci outlet white", "gfci outlet"])
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[1] > 0.3 > scores[2]
    assert scores[3] == 0.0  # no n-gram of "qqq" is in the fitted vocabulary


def test_bad_input_is_one_clear_error():
    with pytest.raises(SearchtuneError, match="non-empty corpus"):
        fit_tfidf([])
    with pytest.raises(SearchtuneError, match="could not be fitted on 2 texts"):
        fit_tfidf(["ab", "cd"], min_df=2)  # no n-gram in two documents
    vectorizer = fit_tfidf(CORPUS)
    with pytest.raises(SearchtuneError, match="2 queries but 1 product texts"):
        tfidf_cosine(vectorizer, ["a", "b"], ["a"])
    with pytest.raises(SearchtuneError, match="chunk_rows must be >= 1"):
        tfidf_cosine(vectorizer, ["a"], ["a"], chunk_rows=0)


def test_on_the_bundled_judgements_it_ranks_better_than_random():
    path = resources.files("searchtune.data") / "sample_judgements.parquet"
    frame = pd.read_parquet(path)
    frame["text"] = frame["product_title"] + " " + frame["product_description"]
    held_out = frame["search_term"].isin(frame["search_term"].drop_duplicates().iloc[::5])
    train, test = frame[~held_out], frame[held_out]
    vectorizer = fit_tfidf(pd.concat([train["search_term"], train["text"]]))
    scores = tfidf_cosine(vectorizer, test["search_term"].tolist(), test["text"].tolist())
    label = (test["relevance"] >= 2.5).astype(int).to_numpy()
    assert roc_auc_score(label, scores) > 0.6
    result = compute_statistics(test["search_term"].to_numpy(), label, {"candidate": scores})
    assert result.models["candidate"]["gauc"].low > result.metrics["gauc"].random_floor
