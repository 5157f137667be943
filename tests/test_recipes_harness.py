"""The recipe experiments' training loop (bench/recipes/harness.py) runs on the product's parameters,
optimizer and optimizer step: a tiny real run with the bundled model, every research part switched on."""

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from searchtune.errors import SearchtuneError
from searchtune.params import TrainParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "recipes"))  # the recipes' own modules
import harness  # noqa: E402
from losses import LossWeights  # noqa: E402

PRODUCTS = ["DEWALT 20-Volt Max Cordless Drill", "Pressure-Treated Lumber 2 in. x 4 in. x 8 ft.",
            "Behr Premium Plus 1 gal. Flat Interior Paint", "Husky 25 ft. Tape Measure"]
QUERIES = ["cordless drill", "2x4 lumber", "interior paint", "tape measure", "drill 20v", "flat paint gallon"]
RELEVANT = {0: 0, 1: 1, 2: 2, 3: 3, 4: 0, 5: 2}  # query -> the product that answers it


def frame(queries: list[int]) -> pd.DataFrame:
    rows = [{"query": QUERIES[q], "product_text": text, "label": float(p == RELEVANT[q]), "target": 1.0 if p == RELEVANT[q] else 0.2,
             "query_group": hashlib.sha256(QUERIES[q].encode()).hexdigest()} for q in queries for p, text in enumerate(PRODUCTS)]
    return pd.DataFrame(rows)


def test_recipe_params_are_the_products_defaults_with_one_epoch():
    assert harness.recipe_params() == TrainParams(epochs=1)
    assert harness.recipe_params(learning_rate=1e-3).model_dump() == {**TrainParams().model_dump(), "epochs": 1, "learning_rate": 1e-3}
    with pytest.raises(SearchtuneError, match="lora_rank"):
        harness.recipe_params(lora_rank=4)


def test_a_recipe_trains_with_the_products_step_and_warm_starts_from_its_saved_model(tmp_path):
    data = {"train": frame([0, 1, 2, 3]), "validation": frame([4, 5]), "test": frame([4, 5])}
    recipe = harness.Recipe(name="tiny", params=harness.recipe_params(batch_size=8, lora_r=4, lora_alpha=8, learning_rate=1e-3),
                            loss=LossWeights(bce=1.0, pairwise=1.0), hybrid=True, query_prior=True, text_transform="normalize")
    trained = harness.train(recipe, data, log=lambda line: None)
    assert len(trained.history) == 1 and trained.history[0]["epoch"] == 1.0
    head = trained.history[0]["head"]
    assert set(head) == {"scale", "bias", "lexical_weight"} and head["lexical_weight"] != 0.0  # the product's step trained it
    assert float(trained.model.query_prior.weight.detach().abs().sum()) > 0
    assert trained.scores("test").shape == (len(data["test"]),)
    record = json.loads(json.dumps(harness.result_record(recipe, trained.history, len(data["train"]))))
    assert record["recipe"]["batch_size"] == 8 and record["recipe"]["loss"]["pairwise"] == 1.0
    harness.save(trained, recipe, str(tmp_path / "saved"))
    warm = harness.build(dataclasses.replace(recipe, init_from=str(tmp_path / "saved")))[0]
    assert warm.head_state_floats() == trained.model.head_state_floats()
    with torch.no_grad():
        assert torch.equal(warm.scale, trained.model.scale)
