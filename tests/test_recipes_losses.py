"""The recipe experiments' training objectives (bench/recipes/losses.py): values against hand-computed formulas, masking, gradients, bad input."""

import math
import sys
from pathlib import Path

import pytest
import torch

from searchtune.errors import SearchtuneError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "recipes"))  # the recipes' own modules
import losses  # noqa: E402


def test_pointwise_bce_matches_formula():
    logits, targets = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0])
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert losses.pointwise_bce(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_pairwise_only_compares_rows_of_one_query():
    # Query 0: rows 0 (grade 1) > 1 (grade 0). Query 1: rows 2 (0.5) > 3 (0). Across queries: no pairs.
    logits = torch.tensor([1.0, 3.0, 0.0, 0.5])
    grades = torch.tensor([1.0, 0.0, 0.5, 0.0])
    groups = torch.tensor([0, 0, 1, 1])
    expected = (math.log1p(math.exp(-(1.0 - 3.0))) + math.log1p(math.exp(-(0.0 - 0.5)))) / 2
    assert losses.pairwise_logistic(logits, grades, groups).item() == pytest.approx(expected, rel=1e-6)
    weighted = (1.0 * math.log1p(math.exp(2.0)) + 0.5 * math.log1p(math.exp(0.5))) / 1.5
    assert losses.pairwise_logistic(logits, grades, groups, weight_by_gap=True).item() == pytest.approx(weighted, rel=1e-6)
    # min_gap 0.6 drops the 0.5-apart pair of query 1.
    assert losses.pairwise_logistic(logits, grades, groups, min_gap=0.6).item() == pytest.approx(math.log1p(math.exp(2.0)), rel=1e-6)


def test_pairwise_without_pairs_is_zero_but_differentiable():
    logits = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = losses.pairwise_logistic(logits, torch.tensor([1.0, 1.0]), torch.tensor([0, 0]))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros(2))


def test_pairwise_gradient_pushes_the_better_row_up():
    logits = torch.tensor([0.0, 0.0], requires_grad=True)
    losses.pairwise_logistic(logits, torch.tensor([1.0, 0.0]), torch.tensor([7, 7])).backward()
    assert logits.grad[0] < 0 < logits.grad[1]


def test_listwise_is_listnet_per_query():
    logits = torch.tensor([1.0, 0.0, 2.0, 5.0, 0.3])
    grades = torch.tensor([1.0, 0.0, 0.5, 0.9, 0.9])  # the last query has equal grades: it adds nothing
    groups = torch.tensor([3, 3, 3, 9, 9])
    temperature = 0.5
    target = torch.softmax(grades[:3] / temperature, 0)
    expected = -(target * torch.log_softmax(logits[:3], 0)).sum()
    assert losses.listwise_softmax(logits, grades, groups, temperature=temperature).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(SearchtuneError, match="temperature"):
        losses.listwise_softmax(logits, grades, groups, temperature=0)


def test_listwise_minimum_is_at_the_target_order():
    grades, groups = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    right = losses.listwise_softmax(torch.tensor([3.0, -3.0]), grades, groups)
    wrong = losses.listwise_softmax(torch.tensor([-3.0, 3.0]), grades, groups)
    assert right < wrong


def test_contrastive_masks_other_positives_of_the_same_query_only():
    queries = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    texts = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.0, 1.0], [0.7, 0.7]]), dim=-1)
    # Query 0: texts 0 and 1 both relevant, text 3 judged irrelevant (hard negative). Query 1: text 2 relevant.
    query_index = torch.tensor([0, 0, 0, 1])
    text_index = torch.tensor([0, 1, 3, 2])
    labels = torch.tensor([1.0, 1.0, 0.0, 1.0])
    scale = 5.0
    got = losses.in_batch_contrastive(queries, texts, query_index, text_index, labels, scale=scale).item()
    sims = scale * queries @ texts.T

    def ce(row, target, masked):
        logits = sims[row].clone()
        logits[masked] = -math.inf
        return -torch.log_softmax(logits, 0)[target].item()

    # Row 0 (q0 -> t0): t1 masked; row 1 (q0 -> t1): t0 masked; row 3 (q1 -> t2): nothing masked.
    expected = (ce(0, 0, [1]) + ce(0, 1, [0]) + ce(1, 2, [])) / 3
    assert got == pytest.approx(expected, rel=1e-5)


def test_contrastive_without_positives_is_zero():
    vectors = torch.eye(2, requires_grad=True)
    loss = losses.in_batch_contrastive(vectors, vectors, torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0.0, 0.0]))
    assert loss.item() == 0.0


def test_combined_loss_is_the_weighted_sum():
    logits = torch.tensor([0.5, -0.5, 1.0])
    labels, targets, groups = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, 0.25, 0.75]), torch.tensor([0, 0, 0])
    weights = losses.LossWeights(bce=1.0, pairwise=0.5, listwise=2.0, graded=True, temperature=0.2)
    total, parts = losses.combined_loss(weights, logits, labels, targets, groups)
    expected = (losses.pointwise_bce(logits, labels) + 0.5 * losses.pairwise_logistic(logits, targets, groups)
                + 2.0 * losses.listwise_softmax(logits, targets, groups, temperature=0.2))
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"bce", "pairwise", "listwise"}
    # Ungraded: pairs come from the 0/1 labels, so rows 0 and 2 (both 1) are not a pair.
    _, parts = losses.combined_loss(losses.LossWeights(bce=0, pairwise=1, graded=False), logits, labels, targets, groups)
    assert parts["pairwise"] == pytest.approx(((math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-1.5))) / 2), rel=1e-6)


def test_combined_loss_rejects_bad_settings():
    with pytest.raises(SearchtuneError, match="not all 0"):
        losses.LossWeights(bce=0.0)
    with pytest.raises(SearchtuneError, match=">= 0"):
        losses.LossWeights(pairwise=-1.0)
    with pytest.raises(SearchtuneError, match="contrastive loss needs"):
        losses.combined_loss(losses.LossWeights(contrastive=1.0), torch.zeros(2), torch.ones(2), torch.ones(2), torch.zeros(2))
