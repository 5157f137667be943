"""Metric kernels over one fixed sort per model: the arithmetic behind ``searchtune.ml.stats``.

Everything here works on arrays that were validated and factorized once
(:class:`QueryLayout`) and returns either *per-query columns* or a *per-query influence*,
so that a bootstrap resample (a weight per query) costs one matrix product instead of a
re-sort:

* Per-query metrics (query-grouped AUC, nDCG@k, reciprocal rank, log loss) are returned as
  a numerator and a denominator per query; the metric under query weights ``w`` is
  ``w @ numerator / w @ denominator``, which is exact.
* Pooled metrics (ROC AUC, average precision) are not sums over queries. They are returned
  as the point value and the per-query influence ``psi`` (the derivative of the metric with
  respect to a query's weight at ``w = 1``), so ``value + (w - 1) @ psi`` is the metric
  under ``w`` to first order. For the ROC AUC this is exactly the clustered DeLong
  variance (Obuchowski 1997: ``sum_q psi_q**2`` is its variance estimate). The exact
  weighted forms over the same sorted order are :func:`weighted_pooled_auc_ap`, for
  test sets small enough to afford them.

Ties: every rank metric averages over the orders a random tie-break could give (midranks
for AUC, averaged gains over tied positions for nDCG, the expected reciprocal rank over
tied positions for MRR), so a constant score yields exactly the random-order expectation.
That is how ``stats`` computes each metric's random floor. Average precision treats a tie
as one threshold, as scikit-learn does (constant scores give the positive rate).

(A little over 300 lines: every kernel shares the layout and tie handling defined here.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from searchtune.errors import SearchtuneError

# Probabilities are clipped to [EPS, 1 - EPS] for log loss, as the pipeline always has.
LOG_LOSS_EPS = 1e-7
_MAX_LOGIT = float(np.log((1 - LOG_LOSS_EPS) / LOG_LOSS_EPS))


@dataclass(frozen=True)
class QueryLayout:
    """Test rows factorized by query, shared by every model's metrics.

    Attributes:
        codes: per row, its query's index in ``0..n_queries-1``.
        labels: per row, 1.0 relevant / 0.0 not.
        gains: per row, the non-negative nDCG gain.
        rows: rows per query. positives: relevant rows per query.
        both_classes: per query, whether it has relevant and non-relevant rows.
        gains_vary: per query, whether its gains differ (nDCG can tell orders apart).
        ideal_dcg: per query, the DCG@k of the best order (by gain).
        k: the nDCG cut-off.
    """

    codes: np.ndarray
    labels: np.ndarray
    gains: np.ndarray
    rows: np.ndarray
    positives: np.ndarray
    both_classes: np.ndarray
    gains_vary: np.ndarray
    ideal_dcg: np.ndarray
    k: int

    @property
    def n_queries(self) -> int:
        return len(self.rows)

    @classmethod
    def build(cls, query_ids, labels, gains=None, k: int = 10) -> QueryLayout:
        """Validate and factorize the test rows once.

        Args:
            query_ids: per row, any hashable query key (strings, ints).
            labels: per row, binary relevance (0/1, bool).
            gains: per row, non-negative graded gains for nDCG (e.g. ``grade - lowest grade``);
                None uses the binary labels.
            k: nDCG cut-off.

        Raises:
            SearchtuneError: empty input, lengths that differ, a missing query id, labels
                other than 0/1, or gains that are negative or not finite.
        """
        codes, _ = pd.factorize(np.asarray(query_ids), use_na_sentinel=True)
        labels = np.asarray(labels, dtype=np.float64)
        n = len(labels)
        if n == 0:
            raise SearchtuneError("no test rows to compute metrics on")
        if len(codes) != n:
            raise SearchtuneError(f"{len(codes)} query ids but {n} labels")
        if (codes < 0).any():
            raise SearchtuneError(f"{int((codes < 0).sum())} rows have no query id")
        if not np.isin(labels, (0.0, 1.0)).all():
            raise SearchtuneError("labels must be 0 or 1 (a graded judgement goes in gains)")
        gains = labels.copy() if gains is None else np.asarray(gains, dtype=np.float64)
        if len(gains) != n:
            raise SearchtuneError(f"{len(gains)} gains but {n} labels")
        if not (np.isfinite(gains) & (gains >= 0)).all():
            raise SearchtuneError("gains must be finite and >= 0")
        if not isinstance(k, int | np.integer) or k < 1:
            raise SearchtuneError(f"nDCG cut-off k must be a positive integer, got {k!r}")
        codes = codes.astype(np.int64)
        n_queries = int(codes.max()) + 1
        rows = np.bincount(codes, minlength=n_queries)
        positives = np.bincount(codes, weights=labels, minlength=n_queries)
        gain_max = np.full(n_queries, -np.inf)
        np.maximum.at(gain_max, codes, gains)
        gain_min = np.full(n_queries, np.inf)
        np.minimum.at(gain_min, codes, gains)
        by_gain = np.lexsort((-gains, codes))
        position = _positions_in_query(codes[by_gain], rows)
        ideal = np.bincount(codes[by_gain], weights=gains[by_gain] * _discount(position, k), minlength=n_queries)
        return cls(codes=codes, labels=labels, gains=gains, rows=rows, positives=positives,
                   both_classes=(positives > 0) & (positives < rows), gains_vary=gain_max > gain_min, ideal_dcg=ideal, k=int(k))


def _discount(position: np.ndarray, k: int) -> np.ndarray:
    return np.where(position < k, 1.0 / np.log2(position + 2.0), 0.0)


def _positions_in_query(sorted_codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """0-based position of each row within its query, for rows sorted by query."""
    starts = np.concatenate(([0], np.cumsum(rows)[:-1]))
    return np.arange(len(sorted_codes)) - starts[sorted_codes]


def _group_starts(*keys: np.ndarray) -> np.ndarray:
    """Indices where any of the sorted ``keys`` changes: the first row of each tie group."""
    change = np.zeros(len(keys[0]), dtype=bool)
    change[:1] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(change)


def per_query_columns(layout: QueryLayout, scores: np.ndarray, logits: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-query numerator and denominator of each per-query metric of one model.

    Args:
        layout: the factorized test rows.
        scores: per row, the model's score (finite; higher = more relevant).
        logits: whether ``scores`` are calibrated logits (then log loss is included).

    Returns:
        ``{"gauc" | "ndcg" | "mrr" | "log_loss": (numerator, denominator)}``, each array
        of length ``n_queries``. GAUC and MRR count queries with both classes once each;
        nDCG counts queries whose gains vary once each; log loss is a mean over rows.
    """
    order = np.lexsort((-scores, layout.codes))
    codes, score, label = layout.codes[order], scores[order], layout.labels[order]
    position = _positions_in_query(codes, layout.rows)
    starts = _group_starts(codes, score)
    size = np.diff(np.append(starts, len(order)))
    group = np.repeat(np.arange(len(starts)), size)
    first_position = position[starts]
    group_positives = np.bincount(group, weights=label)
    group_query = codes[starts]
    n_q = layout.rows[group_query]
    # Ascending midrank of a tie group within its query (top row = rank n_q).
    midrank = n_q - first_position - (size - 1) / 2.0
    rank_sum = np.bincount(group_query, weights=group_positives * midrank, minlength=layout.n_queries)
    p, both = layout.positives, layout.both_classes
    pairs = np.where(both, p * (layout.rows - p), 1.0)
    auc = np.where(both, (rank_sum - p * (p + 1) / 2.0) / pairs, 0.0)
    columns = {"gauc": (auc, both.astype(np.float64))}

    mean_gain = np.bincount(group, weights=layout.gains[order]) / size
    dcg = np.bincount(codes, weights=mean_gain[group] * _discount(position, layout.k), minlength=layout.n_queries)
    vary = layout.gains_vary
    columns["ndcg"] = (np.where(vary, dcg / np.where(vary, layout.ideal_dcg, 1.0), 0.0), vary.astype(np.float64))

    with_positive = np.flatnonzero(group_positives > 0)
    first = with_positive[_group_starts(group_query[with_positive])]
    reciprocal = np.zeros(layout.n_queries)
    reciprocal[group_query[first]] = expected_reciprocal_rank(first_position[first], size[first], group_positives[first])
    columns["mrr"] = (np.where(both, reciprocal, 0.0), both.astype(np.float64))

    if logits:
        x = np.clip(scores, -_MAX_LOGIT, _MAX_LOGIT)
        loss = np.logaddexp(0.0, np.where(layout.labels > 0, -x, x))
        columns["log_loss"] = (np.bincount(layout.codes, weights=loss, minlength=layout.n_queries), layout.rows.astype(np.float64))
    return columns


def expected_reciprocal_rank(before: np.ndarray, tied: np.ndarray, tied_positives: np.ndarray) -> np.ndarray:
    """E[1 / rank of the first relevant row] when it sits in a tie group broken at random.

    Args:
        before: rows ranked strictly above the group. tied: rows in the group.
        tied_positives: relevant rows in the group (>= 1).

    Returns:
        Per entry, ``sum_j P(J = j) / (before + j)`` where ``J`` is the position of the
        first relevant row among ``tied`` shuffled rows with ``tied_positives`` relevant.
    """
    before = np.asarray(before, dtype=np.int64)
    tied = np.asarray(tied, dtype=np.int64)
    tied_positives = np.asarray(tied_positives, dtype=np.int64)
    result = 1.0 / (before + 1.0)
    ties = np.flatnonzero(tied > 1)
    if len(ties):
        triples = np.stack([before[ties], tied[ties], tied_positives[ties]], axis=1)
        unique, inverse = np.unique(triples, axis=0, return_inverse=True)
        values = np.empty(len(unique))
        for i, (s, m, p) in enumerate(unique):
            j = np.arange(1, m - p + 2)
            # P(J = 1) = p / m; P(J = j + 1) / P(J = j) = (m - j - p + 1) / (m - j).
            ratios = np.concatenate(([p / m], (m - j[:-1] - p + 1) / (m - j[:-1])))
            values[i] = float(np.sum(np.cumprod(ratios) / (s + j)))
        result[ties] = values[inverse.ravel()]
    return result


@dataclass(frozen=True)
class PooledOrder:
    """One model's rows in ascending score order, with what the weighted pooled forms need.

    Attributes:
        order: row indices by ascending score. starts: first sorted row of each tie group.
        positive_queries / negative_queries: query codes of the relevant / other rows, in
            ascending score order.
        negatives_below / negatives_up_to: per relevant row (same order), how many other
            rows score strictly below it / at most its score.
        positives_below: per relevant row, how many relevant rows score strictly below it.
    """

    order: np.ndarray
    starts: np.ndarray
    positive_queries: np.ndarray
    negative_queries: np.ndarray
    negatives_below: np.ndarray
    negatives_up_to: np.ndarray
    positives_below: np.ndarray

    @classmethod
    def of(cls, layout: QueryLayout, scores: np.ndarray) -> PooledOrder:
        order = np.argsort(scores, kind="stable")
        ordered = scores[order]
        relevant = layout.labels[order] > 0
        positive_scores, negative_scores = ordered[relevant], ordered[~relevant]
        return cls(order=order, starts=_group_starts(ordered),
                   positive_queries=layout.codes[order][relevant], negative_queries=layout.codes[order][~relevant],
                   negatives_below=np.searchsorted(negative_scores, positive_scores, side="left"),
                   negatives_up_to=np.searchsorted(negative_scores, positive_scores, side="right"),
                   positives_below=np.searchsorted(positive_scores, positive_scores, side="left"))

    def group_sums(self, values: np.ndarray) -> np.ndarray:
        """Sum ``values`` (rows in this order) per tie group."""
        return values if len(self.starts) == len(values) else np.add.reduceat(values, self.starts)

    def group_of_row(self) -> np.ndarray:
        """Per sorted row, its tie group's index."""
        return np.repeat(np.arange(len(self.starts)), np.diff(np.append(self.starts, len(self.order))))


def pooled_auc_ap(layout: QueryLayout, pooled: PooledOrder) -> dict[str, tuple[float, np.ndarray]]:
    """Pooled ROC AUC and average precision, each with its per-query influence.

    Returns:
        ``{"roc_auc": (value, psi), "pr_auc": (value, psi)}`` where ``psi`` has length
        ``n_queries`` and sums to 0. Both values are NaN when a class is missing.
    """
    label = layout.labels[pooled.order]
    gp = pooled.group_sums(label)
    gn = pooled.group_sums(1.0 - label)
    total_pos, total_neg = gp.sum(), gn.sum()
    if total_pos == 0 or total_neg == 0:
        nan = np.full(layout.n_queries, np.nan)
        return {"roc_auc": (float("nan"), nan), "pr_auc": (float("nan"), nan)}
    group = pooled.group_of_row()
    codes = layout.codes[pooled.order]

    # ROC AUC: DeLong's placement values with ties counted one half.
    neg_below = np.cumsum(gn) - gn + 0.5 * gn
    pos_above = total_pos - np.cumsum(gp) + 0.5 * gp
    auc = float(np.dot(gp, neg_below) / (total_pos * total_neg))
    row = np.where(label > 0, (neg_below[group] / total_neg - auc) / total_pos, (pos_above[group] / total_pos - auc) / total_neg)
    auc_psi = np.bincount(codes, weights=row, minlength=layout.n_queries)

    # Average precision: thresholds are tie groups, from the top score down.
    tp = total_pos - np.cumsum(gp) + gp
    fp = total_neg - np.cumsum(gn) + gn
    depth = tp + fp
    precision = tp / depth
    ap = float(np.dot(gp, precision) / total_pos)
    # A row in group g is counted at every threshold at or below its score: groups <= g.
    below_pos = np.cumsum(gp * fp / depth**2)
    below_neg = np.cumsum(gp * tp / depth**2)
    row = np.where(label > 0, (precision[group] - ap + below_pos[group]) / total_pos, -below_neg[group] / total_pos)
    ap_psi = np.bincount(codes, weights=row, minlength=layout.n_queries)
    return {"roc_auc": (auc, auc_psi), "pr_auc": (ap, ap_psi)}


def weighted_pooled_auc_ap(pooled: PooledOrder, query_weights: np.ndarray) -> dict[str, np.ndarray]:
    """Exact pooled ROC AUC and average precision under each row of query weights.

    Args:
        pooled: the model's ascending score order.
        query_weights: ``(resamples, n_queries)`` weights; each test row gets its query's
            weight. Memory is a few ``resamples * rows`` floats: pass chunks.

    Returns:
        ``{"roc_auc": (resamples,), "pr_auc": (resamples,)}``; NaN where a class has no weight.
    """
    resamples = query_weights.shape[0]
    positive = query_weights[:, pooled.positive_queries]
    cum_negative = np.zeros((resamples, len(pooled.negative_queries) + 1))
    np.cumsum(query_weights[:, pooled.negative_queries], axis=1, out=cum_negative[:, 1:])
    cum_positive = np.zeros((resamples, positive.shape[1] + 1))
    np.cumsum(positive, axis=1, out=cum_positive[:, 1:])
    total_pos, total_neg = cum_positive[:, -1], cum_negative[:, -1]
    below = cum_negative[:, pooled.negatives_below]
    with np.errstate(invalid="ignore", divide="ignore"):
        # Negatives strictly below plus half the tied ones.
        auc = 0.5 * np.einsum("bp,bp->b", positive, below + cum_negative[:, pooled.negatives_up_to]) / (total_pos * total_neg)
        # At a relevant row's score: relevant and other weight scoring at least as high.
        tp = total_pos[:, None] - cum_positive[:, pooled.positives_below]
        depth = tp + total_neg[:, None] - below
        precision = np.divide(tp, depth, out=np.zeros_like(tp), where=depth > 0)
        ap = np.einsum("bp,bp->b", positive, precision) / total_pos
    return {"roc_auc": auc, "pr_auc": ap}
