"""The steps on the real Home Depot judgements (../shared, never copied into the repo)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from searchtune.ml.stats import compute_statistics
from searchtune.params import IngestParams
from searchtune.steps import evaluate, ingest, splits

HOME_DEPOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "home_depot_search_relevance" / "train.parquet"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not HOME_DEPOT.exists(), reason=f"real data not found at {HOME_DEPOT} (CI has it there)"),
]
PARAMS = IngestParams(data=str(HOME_DEPOT), text_columns="product_title")  # label: relevance >= 2.5


@pytest.fixture(scope="module")
def home_depot_splits(tmp_path_factory):
    out = tmp_path_factory.mktemp("home_depot")
    return ingest.ingest(str(out), PARAMS), str(out)


def test_ingest_reads_every_row_and_splits_by_query(home_depot_splits):
    stats, out = home_depot_splits
    raw = pd.read_parquet(HOME_DEPOT)
    assert stats.rows_read == len(raw) == 74067 and stats.rows_rejected == 0
    expected_duplicates = len(raw) - len(raw.drop_duplicates(subset=["search_term", "product_title", "relevance"]))
    assert stats.duplicates_dropped == expected_duplicates
    frames = {s: splits.read_split(out, s) for s in splits.SPLITS}
    assert sum(len(f) for f in frames.values()) == stats.rows_kept
    positives = sum(int(f["label"].sum()) for f in frames.values())
    kept = raw.drop_duplicates(subset=["search_term", "product_title", "relevance"])
    assert positives == int((kept["relevance"] >= 2.5).sum())
    train_queries = set(frames["train"]["query_group"])
    assert not train_queries & set(frames["test"]["query_group"])
    assert not train_queries & set(frames["validation"]["query_group"])
    assert 0.78 < stats.splits["train"].rows / stats.rows_kept < 0.82


def test_untuned_model_baseline_on_real_test_rows(home_depot_splits):
    """The untuned bi-encoder cosine: the floor a fine-tuned model must clear (about 0.68)."""
    _, out = home_depot_splits
    test, validation = splits.read_split(out, "test"), splits.read_split(out, "validation")
    from searchtune.ml import modeling

    scores = evaluate.score_untuned_base(modeling.resolve_base_model(""), 64, test, validation.sample(2000, random_state=0))
    statistics = compute_statistics(test["query_group"], test["label"], {"base": scores}, gains=test["target"],
                                    candidate="base", logit_models={"base"})
    result = statistics.models["base"]
    assert 0.65 < result["roc_auc"].value < 0.72, result
    # Within queries the untuned model is barely above random (issue 15: 0.600 on these rows).
    assert 0.55 < result["gauc"].value < 0.65, result
    assert np.isfinite(result["log_loss"].value) and statistics.counts.queries_with_both_classes > 700
