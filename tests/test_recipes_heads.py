"""The recipe experiments' research heads (bench/recipes/heads.py) on the real bundled model, and the
line between them and the product: a saved research head is refused by the product's loader."""

import sys
from pathlib import Path

import pytest
import torch

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.ml import modeling
from searchtune.params import TrainParams
from searchtune.steps.finetune import build_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "recipes"))  # the recipes' own modules
import heads  # noqa: E402

QUERIES = ["cordless drill", "2x4 lumber 8 ft"]
TEXTS = ["DEWALT 20-Volt Max Cordless Drill", "Pressure-Treated Lumber 2 in. x 4 in. x 8 ft."]
PARAMS = TrainParams(lora_r=4, lora_alpha=8)


@pytest.fixture(scope="module")
def base():
    return modeling.resolve_base_model("")


def batch(tokenizer, lexical=None) -> dict:
    q = tokenizer(QUERIES, padding=True, return_tensors="pt")
    t = tokenizer(TEXTS, padding=True, return_tensors="pt")
    out = {"query_ids": q["input_ids"], "query_mask": q["attention_mask"], "text_ids": t["input_ids"], "text_mask": t["attention_mask"]}
    if lexical is not None:
        out["lexical"] = torch.tensor(lexical)
    return out


def saved(model, base: str, folder: Path) -> str:
    record = records.ModelRecord(architecture="bi-encoder", base_model=records.BaseModelRef(name_or_path=base, bundled=True),
                                 max_length=64, lora_r=PARAMS.lora_r, training=PARAMS.model_dump())
    modeling.save_model(model, modeling.load_tokenizer(base), str(folder), record)
    return str(folder)


def test_hybrid_head_adds_the_weighted_lexical_score_and_warm_starts_back(base, tmp_path):
    torch.manual_seed(0)
    model = heads.build(PARAMS, base, lexical_weight=0.0).eval()
    tokenizer = modeling.load_tokenizer(base)
    with torch.no_grad():
        model.lexical_weight.fill_(3.5)
        without = model(batch(tokenizer, [0.0, 0.0]))
        with_lexical = model(batch(tokenizer, [0.2, 0.6]))
        assert torch.allclose(with_lexical - without, torch.tensor([0.7, 2.1]), atol=1e-5)
        with pytest.raises(SearchtuneError, match="lexical match score"):
            model(batch(tokenizer))
        folder = saved(model, base, tmp_path / "hybrid")
        again = heads.build(PARAMS, base, lexical_weight=0.0, init_from=folder).eval()
        assert again.head_state_floats()["lexical_weight"] == 3.5
        assert torch.allclose(again(batch(tokenizer, [0.2, 0.6])), with_lexical, atol=1e-5)


def test_the_product_refuses_a_research_head_instead_of_scoring_without_it(base, tmp_path):
    folder = saved(heads.build(PARAMS, base, lexical_weight=1.0), base, tmp_path / "hybrid")
    with pytest.raises(SearchtuneError, match=r"its head holds \['bias', 'lexical_weight', 'scale'\]; a searchtune "
                                              r"bi-encoder's holds \['bias', 'scale'\]"):
        modeling.load_trained_model(folder)
    with pytest.raises(SearchtuneError, match=r"cannot warm-start from .*: its head holds \['bias', 'lexical_weight', 'scale'\], "
                                              r"this run's head \['bias', 'scale'\]"):
        modeling.build_model(PARAMS, base, init_from=folder)
    plain = saved(modeling.build_model(PARAMS, base), base, tmp_path / "plain")
    with pytest.raises(SearchtuneError, match="this run's head \\['bias', 'lexical_weight', 'scale'\\]"):
        heads.build(PARAMS, base, lexical_weight=0.0, init_from=plain)


def test_query_prior_shifts_every_row_of_a_query_alike_and_trains_as_head(base):
    torch.manual_seed(0)
    model = heads.build(PARAMS, base, query_prior=True).eval()
    tokenizer = modeling.load_tokenizer(base)
    with torch.no_grad():
        plain = model(batch(tokenizer))
        model.query_prior.weight.normal_(0, 1.0)
        columns = batch(tokenizer)
        query_vectors = model.embed(columns["query_ids"], columns["query_mask"])
        text_vectors = model.embed(columns["text_ids"], columns["text_mask"])
        # Both texts against query 0: the prior adds the same amount to each, so their order within the query holds.
        index = torch.tensor([0, 0]), torch.tensor([0, 1])
        with_prior = model.logits_of_vectors(query_vectors, text_vectors, *index)
        cosine_only = model.pair_logits((query_vectors[index[0]] * text_vectors[index[1]]).sum(-1))
        shift = with_prior - cosine_only
        assert torch.allclose(shift, shift[0].expand(2), atol=1e-6) and abs(float(shift[0])) > 1e-3
        assert not torch.allclose(model(batch(tokenizer)), plain, atol=1e-3)
    assert set(model.head_state()) == {"scale", "bias"}  # a vector is no head scalar: not saved
    optimizer, _ = build_optimizer(model, PARAMS, total_steps=10, device=torch.device("cpu"))
    head_group = optimizer.param_groups[1]
    assert head_group["lr"] == PARAMS.head_learning_rate and head_group["weight_decay"] == 0.0
    assert any(p is model.query_prior.weight for p in head_group["params"]) and len(head_group["params"]) == 3
