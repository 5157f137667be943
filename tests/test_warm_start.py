"""Warm start (``modeling.build_model(init_from=...)``), with the real bundled model."""

import pytest
import torch

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.ml import modeling
from searchtune.params import TrainParams, parse
from searchtune.registry import ModelRegistry
from searchtune.steps.training import warm_start

QUERIES = ["cordless drill", "2x4 lumber 8 ft"]
TEXTS = ["DEWALT 20-Volt Max Cordless Drill", "Pressure-Treated Lumber 2 in. x 4 in. x 8 ft."]


def batch(tokenizer) -> dict:
    q = tokenizer(QUERIES, padding=True, return_tensors="pt")
    t = tokenizer(TEXTS, padding=True, return_tensors="pt")
    return {"query_ids": q["input_ids"], "query_mask": q["attention_mask"], "text_ids": t["input_ids"], "text_mask": t["attention_mask"]}


def trained_like(params: TrainParams, base: str, tmp_path):
    """A model with non-zero adapter weights and a moved head, saved like the fine-tune step saves it."""
    torch.manual_seed(0)
    model = modeling.build_model(params, base)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
        model.scale.fill_(17.0)
        model.bias.fill_(-9.0)
    record = records.ModelRecord(architecture=params.architecture, base_model=records.BaseModelRef(name_or_path=base, bundled=True),
                                 max_length=64, lora_r=params.lora_r, training=params.model_dump())
    modeling.save_model(model, modeling.load_tokenizer(base), str(tmp_path / "saved"), record)
    return model.eval(), str(tmp_path / "saved")


@pytest.fixture(scope="module")
def base():
    return modeling.resolve_base_model("")


def test_warm_start_continues_from_the_saved_model(base, tmp_path):
    params = TrainParams(lora_r=4, lora_alpha=8)
    saved_model, saved_dir = trained_like(params, base, tmp_path)
    tokenizer = modeling.load_tokenizer(base)
    with torch.no_grad():
        expected = saved_model(batch(tokenizer))
        fresh = modeling.build_model(params, base).eval()(batch(tokenizer))
        warm = modeling.build_model(params, base, init_from=saved_dir).eval()
        got = warm(batch(tokenizer))
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(fresh, expected, atol=1e-2)  # the check can fail: a fresh model scores differently
    assert any(p.requires_grad for n, p in warm.named_parameters() if "lora_" in n)  # and it trains on


def test_warm_start_refuses_a_model_that_does_not_fit(base, tmp_path):
    _, saved_dir = trained_like(TrainParams(lora_r=4, lora_alpha=8), base, tmp_path)
    with pytest.raises(SearchtuneError, match="lora_r 4 vs 8"):
        modeling.build_model(TrainParams(lora_r=8, lora_alpha=8), base, init_from=saved_dir)
    with pytest.raises(SearchtuneError, match="not a searchtune model"):
        modeling.build_model(TrainParams(lora_r=4, lora_alpha=8), base, init_from=str(tmp_path))


def test_init_from_resolves_a_registered_version_and_refuses_what_cannot_be_continued(base, tmp_path):
    params = TrainParams(lora_r=4, lora_alpha=8, init_from="production")
    _, saved_dir = trained_like(params, base, tmp_path)
    registry = ModelRegistry(str(tmp_path / "registry"))
    name = "relevance"
    # A schedule's first run: no production model yet, so it trains from the base.
    assert warm_start.resolve(registry.root, name, params, base) is None
    registry.register_version(name, saved_dir, {"run_id": "run-1", "created_by": "test", "auc": 0.7, "blessed": True})
    assert warm_start.resolve(registry.root, name, params, base) is None  # registered, not promoted
    latest = warm_start.resolve(registry.root, name, params.model_copy(update={"init_from": "latest"}), base)
    assert latest == records.WarmStart(model_name=name, version=1, uri=registry.version_uri(name, 1))
    registry.promote(name, 1, actor="test", reason="first")
    assert warm_start.resolve(registry.root, name, params, base).version == 1
    with pytest.raises(SearchtuneError, match=r"init_from='production': relevance v1 cannot be continued by this run, "
                                              r"it differs in lora_r 4 vs 8"):
        warm_start.resolve(registry.root, name, params.model_copy(update={"lora_r": 8}), base)
    with pytest.raises(SearchtuneError, match=r"init_from='7': model 'relevance' has no version 7; available: v1"):
        warm_start.resolve(registry.root, name, params.model_copy(update={"init_from": "7"}), base)
    with pytest.raises(SearchtuneError, match=r"init_from='staging': model 'relevance' has no alias 'staging'"):
        warm_start.resolve(registry.root, name, params.model_copy(update={"init_from": "staging"}), base)
    # A version whose record this searchtune cannot read: one line, no traceback.
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / records.ModelRecord.FILE).write_text('{"architecture": "bi-encoder"}')
    registry.register_version(name, str(tmp_path / "odd"), {"run_id": "run-2", "created_by": "test"})
    with pytest.raises(SearchtuneError, match=r"^init_from='2': relevance v2's searchtune_model.json is not a model record "
                                              r"this searchtune reads \(base_model: Field required\)$"):
        warm_start.resolve(registry.root, name, params.model_copy(update={"init_from": "2"}), base)
    # The fine-tune step's side: the resolved version, fetched with its checksums, loads as the saved model.
    start, folder = warm_start.fetch(registry.root, name, "1", str(tmp_path / "fetched"))
    assert start.version == 1 and (tmp_path / "fetched" / records.ModelRecord.FILE).exists()
    assert warm_start.fetch(registry.root, name, "", str(tmp_path / "unused")) == (None, "")
    modeling.build_model(params, base, init_from=folder)


def test_init_from_takes_only_a_registry_reference():
    for good in ("", "production", "3", "v3", "latest", "staging-2"):
        assert parse(TrainParams, {"init_from": good}).init_from == good
    with pytest.raises(SearchtuneError, match=r"^invalid parameters: init_from='\.\./model': must be a registry version "
                                              r"\(3, v3\), 'latest' or an alias such as 'production'$"):
        parse(TrainParams, {"init_from": "../model"})
