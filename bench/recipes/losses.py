"""Training objectives the recipe screen tried, and their weighted combination.

Recipe research, not the product: on the screen (``bench/results/recipes_screen.json``) no
objective here moved validation query-grouped AUC by more than +0.002 over plain BCE, and
the within-query ones cost pooled AUC, so the fine-tune step trains with BCE alone.

Search ranks the products *of one query*, so besides the pointwise BCE of the product trainer
(which also learns to rank queries against each other: calibration, and most of the pooled
AUC) the objective can look at rows of the same query together:

* :func:`pointwise_bce`: BCE of each row's logit against its 0/1 label or soft target.
* :func:`pairwise_logistic`: RankNet; for each pair of rows of one query where one has
  the higher grade, ``softplus(-(s_hi - s_lo))``. A direct surrogate of the query-grouped AUC.
* :func:`listwise_softmax`: ListNet; per query, cross-entropy between the softmax of the
  grades and the softmax of the logits.
* :func:`in_batch_contrastive`: MultipleNegativesRankingLoss-style; each positive
  (query, product) row must pick its product among all products in the batch. Products
  that are positives of the same query are masked out (not false negatives), products the
  query's own judgements call negative stay in as hard negatives.

The within-query losses need several rows of a query in one batch:
``sampling.QueryGroupedBatches`` (next to this module). Rows are grouped by an integer ``groups``
tensor (equal ids = same query); a group of one row or with equal grades adds nothing.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.nn import functional

from searchtune.errors import SearchtuneError


def pointwise_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of logits against targets in [0, 1].

    Args:
        logits: ``[n]`` scores.
        targets: ``[n]`` labels (0/1) or soft targets.

    Returns:
        Scalar loss.
    """
    return functional.binary_cross_entropy_with_logits(logits.float(), targets.float())


def _ordered_pairs(grades: torch.Tensor, groups: torch.Tensor, min_gap: float) -> torch.Tensor:
    """``[n, n]`` bool: row i and row j share a group and grade_i - grade_j > min_gap."""
    same_group = groups[:, None] == groups[None, :]
    return same_group & ((grades[:, None] - grades[None, :]) > min_gap)


def pairwise_logistic(logits: torch.Tensor, grades: torch.Tensor, groups: torch.Tensor, *, min_gap: float = 0.0,
                      weight_by_gap: bool = False) -> torch.Tensor:
    """RankNet loss over the ordered pairs within each group.

    Args:
        logits: ``[n]`` scores.
        grades: ``[n]`` relevance (0/1 labels or graded targets); higher = more relevant.
        groups: ``[n]`` integer query ids.
        min_gap: pairs whose grades differ by this much or less are ignored (rater noise).
        weight_by_gap: weight each pair by its grade difference (LambdaRank-like |Δ gain|).

    Returns:
        Scalar: the (weighted) mean pair loss; 0 (with a gradient path) when the batch has no pair.
    """
    grades = grades.float()
    pairs = _ordered_pairs(grades, groups, min_gap)
    if not bool(pairs.any()):
        return logits.sum() * 0.0
    margins = logits.float()[:, None] - logits.float()[None, :]
    losses = functional.softplus(-margins[pairs])
    if not weight_by_gap:
        return losses.mean()
    weights = (grades[:, None] - grades[None, :])[pairs]
    return (losses * weights).sum() / weights.sum()


def listwise_softmax(logits: torch.Tensor, grades: torch.Tensor, groups: torch.Tensor, *, temperature: float = 0.1) -> torch.Tensor:
    """ListNet loss: per group, cross-entropy of softmax(grades / temperature) against softmax(logits).

    Args:
        logits: ``[n]`` scores.
        grades: ``[n]`` relevance; ``temperature`` sets how peaked the target distribution is.
        groups: ``[n]`` integer query ids.
        temperature: > 0; with grades in [0, 1], 0.1 puts ~e^3.3 more mass on a 3.0 than a 2.67.

    Returns:
        Scalar: mean over groups with at least two rows whose grades differ; 0 when there is none.
    """
    if temperature <= 0:
        raise SearchtuneError(f"listwise temperature must be > 0, got {temperature}")
    _, group_index = torch.unique(groups, return_inverse=True)
    members = group_index[None, :] == torch.arange(int(group_index.max()) + 1, device=groups.device)[:, None]  # [G, n]
    grades = grades.float()
    high = torch.where(members, grades[None, :], -torch.inf).amax(1)
    low = torch.where(members, grades[None, :], torch.inf).amin(1)
    useful = (members.sum(1) > 1) & (high > low)
    if not bool(useful.any()):
        return logits.sum() * 0.0
    members = members[useful]
    log_predicted = torch.log_softmax(torch.where(members, logits.float()[None, :], -torch.inf), dim=1)
    target = torch.softmax(torch.where(members, grades[None, :] / temperature, -torch.inf), dim=1)
    return -(target * torch.where(members, log_predicted, 0.0)).sum(1).mean()


def in_batch_contrastive(query_vectors: torch.Tensor, text_vectors: torch.Tensor, query_index: torch.Tensor,
                         text_index: torch.Tensor, labels: torch.Tensor, *, scale: float | torch.Tensor = 20.0) -> torch.Tensor:
    """MultipleNegativesRankingLoss over the distinct texts of the batch, false negatives masked.

    Args:
        query_vectors: ``[Q, d]`` unit vectors of the batch's distinct queries.
        text_vectors: ``[T, d]`` unit vectors of the batch's distinct product texts.
        query_index: ``[n]`` row -> its query's index in ``query_vectors``.
        text_index: ``[n]`` row -> its text's index in ``text_vectors``.
        labels: ``[n]`` 0/1; each positive row is one softmax over all ``T`` texts.
        scale: inverse temperature of the cosine (sentence-transformers uses 20).

    Returns:
        Scalar: mean cross-entropy over positive rows; 0 when the batch has none.
    """
    positive = labels > 0.5
    if not bool(positive.any()):
        return query_vectors.sum() * 0.0
    similarities = scale * query_vectors.float() @ text_vectors.float().T  # [Q, T]
    # Texts judged relevant for the query are not negatives for it, except the row's own text (its target).
    relevant = torch.zeros_like(similarities, dtype=torch.bool)
    relevant[query_index[positive], text_index[positive]] = True
    rows = similarities[query_index[positive]]  # [P, T]
    others_relevant = relevant[query_index[positive]].clone()
    others_relevant[torch.arange(len(rows), device=rows.device), text_index[positive]] = False
    return functional.cross_entropy(rows.masked_fill(others_relevant, -torch.inf), text_index[positive])


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of each objective in the total (0 = off) and their settings.

    Attributes:
        bce: pointwise BCE weight.
        pairwise: RankNet weight.
        listwise: ListNet weight.
        contrastive: in-batch contrastive weight (needs the batch's query and text vectors).
        graded: rank and listwise on the graded target instead of the 0/1 label.
        min_gap: pairwise: ignore pairs whose grades differ by this much or less.
        temperature: listwise target temperature.
        contrastive_scale: inverse temperature of the contrastive softmax.
    """

    bce: float = 1.0
    pairwise: float = 0.0
    listwise: float = 0.0
    contrastive: float = 0.0
    graded: bool = True
    min_gap: float = 0.0
    temperature: float = 0.1
    contrastive_scale: float = 20.0

    def __post_init__(self):
        weights = (self.bce, self.pairwise, self.listwise, self.contrastive)
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise SearchtuneError(f"loss weights must be >= 0 and not all 0, got {weights}")


def combined_loss(weights: LossWeights, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                  groups: torch.Tensor, *, query_vectors: torch.Tensor | None = None, text_vectors: torch.Tensor | None = None,
                  query_index: torch.Tensor | None = None, text_index: torch.Tensor | None = None,
                  bce_targets: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of the objectives whose weight is above 0.

    Args:
        weights: which objectives, how much of each, and their settings.
        logits: ``[n]`` row logits.
        labels: ``[n]`` 0/1 labels.
        targets: ``[n]`` graded targets in [0, 1] (equal to ``labels`` for binary data).
        groups: ``[n]`` integer query ids.
        query_vectors, text_vectors, query_index, text_index: the batch's distinct unit
            vectors and each row's index into them; required when ``weights.contrastive > 0``.
        bce_targets: what BCE fits (default ``labels``; pass ``targets`` for soft targets).

    Returns:
        ``(total, parts)``: the loss to back-propagate and each part's value (for logs).
    """
    grades = targets if weights.graded else labels
    parts: dict[str, torch.Tensor] = {}
    if weights.bce > 0:
        parts["bce"] = pointwise_bce(logits, labels if bce_targets is None else bce_targets)
    if weights.pairwise > 0:
        parts["pairwise"] = pairwise_logistic(logits, grades, groups, min_gap=weights.min_gap)
    if weights.listwise > 0:
        parts["listwise"] = listwise_softmax(logits, grades, groups, temperature=weights.temperature)
    if weights.contrastive > 0:
        if query_vectors is None or text_vectors is None or query_index is None or text_index is None:
            raise SearchtuneError("the contrastive loss needs the batch's query and text vectors and each row's index into them")
        parts["contrastive"] = in_batch_contrastive(query_vectors, text_vectors, query_index, text_index, labels,
                                                    scale=weights.contrastive_scale)
    total = sum(getattr(weights, name) * value for name, value in parts.items())
    return total, {name: float(value.detach()) for name, value in parts.items()}
