"""The numbers behind the evaluation report, from the per-row test predictions.

Curves (ROC, precision-recall), score distributions by label, calibration (reliability bins
and expected calibration error), per-query changes against a reference model, and slices
with the gate metric and its interval. Plain functions of arrays and frames; the HTML is
``searchtune.steps.evaluation.report``.

Slices (what they mean is also printed in the report):

* query length: 1-2, 3-4, 5+ words.
* head vs tail queries. Splits are by query, so no test query was ever trained on and its
  own training frequency is always zero; familiarity is measured on its words instead.
  *Head*: every word of the query occurs in some training query. *Tail*: at least one word
  occurs in none (new vocabulary, rare products, typos).
* products unseen in training: the row's product text never appears in the training split.

A slice's statistics are ``searchtune.ml.stats.compute_statistics`` on the slice's rows
(the same query-clustered bootstrap as the gate); with fewer queries behind the gate
metric than the gate's ``min_test_queries`` the slice shows no numbers and says why.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from searchtune.ml.ranking import QueryLayout, per_query_columns
from searchtune.ml.stats import BASE, CANDIDATE, LEXICAL, PRODUCTION, compute_statistics
from searchtune.params import GateParams
from searchtune.records import Difference, Estimate

MODEL_ORDER = (CANDIDATE, PRODUCTION, BASE, LEXICAL)
LOGIT_MODELS = (CANDIDATE, PRODUCTION, BASE)  # calibrated logits; the lexical cosine is not a probability
CURVE_POINTS = 120
CALIBRATION_BINS = 10
TOP_QUERIES = 10


def model_columns(predictions: pd.DataFrame) -> list[str]:
    """The models scored in ``predictions`` (``score_<model>`` columns), in report order."""
    present = [c.removeprefix("score_") for c in predictions.columns if c.startswith("score_")]
    return [m for m in MODEL_ORDER if m in present] + [m for m in present if m not in MODEL_ORDER]


def reference_model(models: list[str]) -> str:
    """What the candidate is held against per query: production when there is one, else the untuned base."""
    return PRODUCTION if PRODUCTION in models else BASE


def _thin(*arrays: np.ndarray, points: int = CURVE_POINTS) -> list[np.ndarray]:
    if len(arrays[0]) <= points:
        return list(arrays)
    keep = np.unique(np.linspace(0, len(arrays[0]) - 1, points).round().astype(int))
    return [a[keep] for a in arrays]


def curves(labels: np.ndarray, scores: dict[str, np.ndarray]) -> dict[str, dict[str, list[np.ndarray]]]:
    """Per model, the ROC curve ``[fpr, tpr]`` and the precision-recall curve ``[recall, precision]``."""
    out = {}
    for name, values in scores.items():
        fpr, tpr, _ = roc_curve(labels, values)
        precision, recall, _ = precision_recall_curve(labels, values)
        out[name] = {"roc": _thin(fpr, tpr), "pr": _thin(recall[::-1], precision[::-1])}
    return out


def calibration(labels: np.ndarray, logits: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Reliability bins of ``sigmoid(logits)`` (equal width) and the expected calibration error.

    Returns:
        ``{"predicted": [...], "observed": [...], "rows": [...], "ece": float}`` over the
        non-empty bins; ECE is the row-weighted mean of |observed - predicted|.
    """
    probability = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    which = np.minimum((probability * bins).astype(int), bins - 1)
    rows = np.bincount(which, minlength=bins)
    predicted = np.bincount(which, weights=probability, minlength=bins)
    observed = np.bincount(which, weights=np.asarray(labels, dtype=np.float64), minlength=bins)
    kept = rows > 0
    predicted, observed, rows = predicted[kept] / rows[kept], observed[kept] / rows[kept], rows[kept]
    ece = float(np.sum(rows * np.abs(observed - predicted)) / rows.sum())
    return {"predicted": predicted, "observed": observed, "rows": rows, "ece": ece}


def score_histogram(labels: np.ndarray, scores: np.ndarray, bins: int = 30) -> dict:
    """Share of relevant and of not-relevant rows per score bin (each sums to 1)."""
    edges = np.histogram_bin_edges(scores, bins=bins)
    shares = {}
    for name, mask in (("relevant", labels == 1), ("not relevant", labels == 0)):
        counts = np.histogram(scores[mask], bins=edges)[0]
        shares[name] = counts / max(counts.sum(), 1)
    return {"edges": edges, **shares}


def per_query_auc(predictions: pd.DataFrame, model: str) -> pd.Series:
    """AUC within each query that has both classes, indexed by ``query_group``."""
    layout = QueryLayout.build(predictions["query_group"].to_numpy(), predictions["label"].to_numpy())
    numerator, denominator = per_query_columns(layout, predictions[f"score_{model}"].to_numpy(np.float64), False)["gauc"]
    groups = pd.factorize(predictions["query_group"].to_numpy())[1]
    return pd.Series(numerator, index=groups)[denominator > 0]


def query_changes(predictions: pd.DataFrame, other: str) -> pd.DataFrame:
    """Per query with both classes: its text, rows, the candidate's and ``other``'s AUC, and the change."""
    candidate, reference = per_query_auc(predictions, CANDIDATE), per_query_auc(predictions, other)
    first = predictions.drop_duplicates("query_group").set_index("query_group")
    rows = predictions.groupby("query_group").size()
    frame = pd.DataFrame({"query": first["query"], "rows": rows, "candidate": candidate, "other": reference}).dropna()
    frame["change"] = frame["candidate"] - frame["other"]
    return frame.sort_values("change", kind="stable")


def top_changes(changes: pd.DataFrame, count: int = TOP_QUERIES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``count`` most improved and the ``count`` most regressed queries (changes of 0 are neither)."""
    improved = changes[changes["change"] > 0].sort_values("change", ascending=False, kind="stable").head(count)
    regressed = changes[changes["change"] < 0].sort_values("change", kind="stable").head(count)
    return improved, regressed


@dataclasses.dataclass
class TrainingIndex:
    """What the slices need to know about the training split, in bounded memory.

    Attributes:
        query_words: word -> number of distinct training queries containing it.
        product_hashes: sorted 64-bit hashes of the distinct training product texts.
    """

    query_words: Counter
    product_hashes: np.ndarray

    @classmethod
    def build(cls, batches) -> TrainingIndex:
        """Build from an iterable of frames with ``query`` and ``product_text`` (the training split, batch by batch)."""
        words: Counter = Counter()
        seen_queries: set[int] = set()
        products: list[np.ndarray] = []
        for frame in batches:
            for query in frame["query"].astype(str).unique():
                key = hash(query)
                if key not in seen_queries:
                    seen_queries.add(key)
                    words.update(set(query.lower().split()))
            products.append(np.unique(text_hashes(frame["product_text"])))
        hashes = np.unique(np.concatenate(products)) if products else np.zeros(0, dtype=np.uint64)
        return cls(query_words=words, product_hashes=hashes)

    def is_tail(self, query: str) -> bool:
        """Whether a word of ``query`` occurs in no training query."""
        return any(self.query_words.get(word, 0) == 0 for word in query.lower().split())

    def unseen_products(self, texts: pd.Series) -> np.ndarray:
        """Per text, whether no training row has it."""
        return ~np.isin(text_hashes(texts), self.product_hashes, assume_unique=False)


def text_hashes(texts: pd.Series) -> np.ndarray:
    """A stable 64-bit hash per text (pandas' hash, the same in every process)."""
    return pd.util.hash_pandas_object(texts.astype(str), index=False).to_numpy(np.uint64)


@dataclasses.dataclass
class Slice:
    """The gate metric of the candidate and the reference model on one slice of the test rows."""

    family: str
    name: str
    rows: int
    queries: int  # queries behind the gate metric (with both classes for gauc)
    candidate: Estimate | None = None
    other: Estimate | None = None
    difference: Difference | None = None
    note: str = ""


def slice_masks(predictions: pd.DataFrame, index: TrainingIndex | None) -> list[tuple[str, str, np.ndarray]]:
    """``(family, name, row mask)`` of every slice (see the module docstring)."""
    words = predictions["query"].astype(str).str.split().str.len().to_numpy()
    masks = [("query length", "1-2 words", words <= 2), ("query length", "3-4 words", (words >= 3) & (words <= 4)),
             ("query length", "5+ words", words >= 5)]
    if index is not None:
        tail = predictions["query"].astype(str).map(index.is_tail).to_numpy(bool)
        unseen = index.unseen_products(predictions["product_text"])
        masks += [("query familiarity", "head: every word in training queries", ~tail),
                  ("query familiarity", "tail: a word no training query has", tail),
                  ("products", "seen in training", ~unseen), ("products", "unseen in training", unseen)]
    return masks


def slices(predictions: pd.DataFrame, index: TrainingIndex | None, gate: GateParams, other: str) -> list[Slice]:
    """The gate metric with its interval, for the candidate and ``other``, on every slice."""
    out = []
    for family, name, mask in slice_masks(predictions, index):
        rows = predictions[mask]
        behind = _queries_behind(rows, gate.gate_metric)
        result = Slice(family=family, name=name, rows=int(mask.sum()), queries=behind)
        if behind < gate.min_test_queries:
            result.note = f"{behind} queries behind the metric, fewer than min_test_queries {gate.min_test_queries}: no interval"
        else:
            stats = compute_statistics(rows["query_group"].to_numpy(), rows["label"].to_numpy(),
                                       {CANDIDATE: rows[f"score_{CANDIDATE}"].to_numpy(), other: rows[f"score_{other}"].to_numpy()},
                                       resamples=gate.bootstrap_resamples, confidence=gate.confidence)
            result.candidate = stats.estimate(CANDIDATE, gate.gate_metric)
            result.other = stats.estimate(other, gate.gate_metric)
            result.difference = stats.difference(other, gate.gate_metric)
        out.append(result)
    return out


def _queries_behind(rows: pd.DataFrame, metric: str) -> int:
    if rows.empty:
        return 0
    if metric != "gauc":
        return int(rows["query_group"].nunique()) if 0 < rows["label"].sum() < len(rows) else 0
    positives = rows.groupby("query_group")["label"].agg(["sum", "size"])
    return int(((positives["sum"] > 0) & (positives["sum"] < positives["size"])).sum())
