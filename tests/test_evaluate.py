"""The champion and evaluate steps as plain functions, on a real (tiny) model and a real registry."""

import os

import pandas as pd
import pytest

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.params import GateParams
from searchtune.registry import ModelRegistry
from searchtune.steps import champion, evaluate

MODEL = "searchtune-relevance"
# The fixture data is small (about 16 test queries): the split-size clause would decide every case.
GATE = GateParams(min_test_queries=5)


@pytest.fixture(scope="module")
def no_champion_evaluation(trained_model_dir, splits_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("no-champion")
    (folder / "empty-registry").mkdir()  # as preflight leaves a new registry
    resolved = champion.resolve_champion(str(folder / "empty-registry"), MODEL, str(folder / "champion"))
    assert not resolved.found and resolved.error is None
    result = evaluate.evaluate(splits_dir, trained_model_dir, str(folder / "champion"), str(folder / "evaluation"),
                               GATE, run_id="run-1")
    return folder / "evaluation", result


def test_a_registry_folder_the_step_cannot_see_is_an_error_not_a_first_run(tmp_path):
    with pytest.raises(SearchtuneError, match="not there, though preflight checked it"):
        champion.resolve_champion(str(tmp_path / "not-mounted"), MODEL, str(tmp_path / "champion"))
    assert not (tmp_path / "champion").exists()


def test_every_model_is_scored_on_the_same_rows_with_intervals(no_champion_evaluation, splits_dir):
    folder, result = no_champion_evaluation
    statistics = result.blessing.statistics
    test = pd.read_parquet(os.path.join(splits_dir, "test.parquet"))
    assert statistics.counts.rows == len(test) == result.test_rows
    assert set(statistics.models) == {"candidate", "base", "lexical"}
    for name in statistics.models:
        gauc = statistics.models[name]["gauc"]
        assert gauc.low < gauc.value < gauc.high, name
    assert set(statistics.comparisons) == {"base", "lexical"}
    assert statistics.metrics["gauc"].random_floor == pytest.approx(0.5)
    assert "log_loss" in statistics.models["candidate"] and "log_loss" not in statistics.models["lexical"]
    assert statistics.resamples == 1000
    # Written where the next step and the reviewer look, and readable as records.
    assert records.Evaluation.read(str(folder)) == result
    assert records.Blessing.read(str(folder)) == result.blessing
    predictions = pd.read_parquet(folder / records.PREDICTIONS_FILE)
    assert len(predictions) == len(test)
    assert {"score_candidate", "score_base", "score_lexical", "query", "product_text", "label"} <= set(predictions.columns)
    summary = (folder / records.SUMMARY_FILE).read_text()
    for heading in ("## Gate", "## Metrics on the same test rows", "*random scores*", "| candidate minus |", "## Slices"):
        assert heading in summary


def test_the_report_model_card_and_drift_are_written_with_the_evaluation(no_champion_evaluation):
    folder, result = no_champion_evaluation
    page = (folder / records.REPORT_FILE).read_text()
    assert page.startswith("<!doctype html>") and len(page.encode()) < 2_000_000
    for section in ("Metrics on the same test rows", "Per query: candidate vs untuned base", "Slices:", "Training", "Data",
                    "Drift since production was trained", "<title>ROC curves", "<title>Reliability diagram"):
        assert section in page, section
    assert "://" not in page and "<script" not in page
    card = (folder / records.MODEL_CARD_FILE).read_text()
    assert "## Intended use" in card and "## Limitations" in card and f"# {MODEL} (run-1)" in card
    # First model: nothing to compare the data with, so no alarm.
    assert result.drift.status == "no_reference" and result.drift.drifted_columns == []
    assert result.drift.headline == "no reference yet (no production model yet): nothing to compare, no alarm"
    assert "no reference yet" in (folder / records.DRIFT_HTML_FILE).read_text()


def test_the_blessing_names_its_clauses_and_the_rule(no_champion_evaluation):
    _, result = no_champion_evaluation
    blessing = result.blessing
    names = [c.name for c in blessing.clauses]
    assert names == ["test_split", "min_auc", "beats_base", "beats_lexical", "non_inferior_to_production",
                     "gain_over_production"]
    production = next(c for c in blessing.clauses if c.name == "non_inferior_to_production")
    assert production.status == "skipped" and blessing.production_version is None
    assert blessing.rule == GATE and blessing.candidate_id == "run-1"
    assert blessing.decided_by == ("all" if blessing.blessed else next(c.name for c in blessing.clauses if c.status == "failed"))


def test_a_production_model_that_cannot_be_fetched_fails_closed(trained_model_dir, splits_dir, tmp_path):
    registry = ModelRegistry(str(tmp_path / "registry"))
    registry.register_version(MODEL, trained_model_dir, {"run_id": "old"})
    registry.move_alias(MODEL, 1, expected=None, actor="test", reason="seed")
    adapter = next(p for p in (tmp_path / "registry").rglob("adapter_model.safetensors"))
    adapter.write_bytes(b"\0" * adapter.stat().st_size)  # same size, other bytes: the checksum catches it
    resolved = champion.resolve_champion(registry.root, MODEL, str(tmp_path / "champion"))
    assert resolved.found and resolved.version == 1 and "checksum" in resolved.error
    result = evaluate.evaluate(splits_dir, trained_model_dir, str(tmp_path / "champion"), str(tmp_path / "evaluation"),
                               GATE.model_copy(update={"require_beat_base": False}))
    assert not result.blessing.blessed
    assert result.blessing.decided_by == "non_inferior_to_production"
    assert "could not be scored" in result.blessing.reason and "failing closed" in result.blessing.reason
    assert "production" in result.blessing.statistics.unscored


def test_the_production_model_is_scored_on_the_same_rows(trained_model_dir, splits_dir, tmp_path):
    registry = ModelRegistry(str(tmp_path / "registry"))
    registry.register_version(MODEL, trained_model_dir, {"run_id": "old"})
    registry.move_alias(MODEL, 1, expected=None, actor="test", reason="seed")
    resolved = champion.resolve_champion(registry.root, MODEL, str(tmp_path / "champion"))
    assert resolved.found and resolved.error is None
    result = evaluate.evaluate(splits_dir, trained_model_dir, str(tmp_path / "champion"), str(tmp_path / "evaluation"),
                               GATE.model_copy(update={"require_beat_base": False}))
    difference = result.blessing.statistics.comparisons["production"]["gauc"]
    # The same weights: the paired difference is exactly zero, so non-inferiority passes.
    assert difference.difference == 0 and difference.low == 0 and difference.high == 0
    assert result.production_version == 1 and result.blessing.blessed
    assert "not worse than production v1" in result.blessing.reason
    # A version registered without a training sample gives drift nothing to compare with.
    assert result.drift.status == "no_reference" and "registered without a training sample" in result.drift.headline
    assert "Per query: candidate vs production v1" in (tmp_path / "evaluation" / records.REPORT_FILE).read_text()
