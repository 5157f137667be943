"""Drift answers "has the data changed since production was trained?" without crying wolf.

Two random query-disjoint halves of one log (what two training splits of the same traffic
look like) are not flagged, while another label rate or another category mix is. The
scenarios are those of bench/drift_calibration.py (imported from it), on the bundled
sample and, when present, on Home Depot; prediction drift is measured with real scorers
(the lexical baseline, and the fine-tuned test model).
"""

import importlib.util
import json
from pathlib import Path

import pytest

from searchtune import records
from searchtune.ml.scoring import score_frame
from searchtune.steps.evaluation import drift

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("drift_calibration", ROOT / "bench" / "drift_calibration.py")
calibration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(calibration)


@pytest.fixture(scope="module")
def sample_log():
    return calibration.load("sample")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_random_query_disjoint_halves_of_one_log_are_not_flagged(sample_log, seed):
    first, second = calibration.halves(sample_log, seed)
    assert not set(first["query"]) & set(second["query"])
    measured = drift.measure(first, second, scorer=calibration.lexical_scorer(first))
    assert set(measured.distances) == set(drift.SIGNALS)
    assert measured.drifted == [], {c: (measured.distances[c], measured.thresholds[c]) for c in measured.distances}
    for column, value in measured.distances.items():
        assert measured.thresholds[column] >= drift.SIGNALS[column].floor
        assert value < 0.9 * measured.thresholds[column], column  # with a margin, not by luck


def test_another_label_rate_is_flagged(sample_log):
    first, second = calibration.halves(sample_log, 0)
    shifted = calibration.raise_label_rate(second, 0.10, seed=0)
    assert shifted["label"].mean() == pytest.approx(second["label"].mean() + 0.10, abs=0.005)
    measured = drift.measure(first, shifted)
    assert "label" in measured.drifted


def test_another_category_mix_is_flagged(sample_log):
    first, second = calibration.halves(sample_log, 0)
    measured = drift.measure(first, calibration.category_mix("sample", second))
    assert "product_topic" in measured.drifted and "label" not in measured.drifted


@pytest.mark.realdata
@pytest.mark.skipif(not calibration.HOME_DEPOT.exists(), reason="needs ../shared/data/home_depot_search_relevance")
def test_home_depot_halves_are_quiet_and_its_shifts_are_not():
    log = calibration.load("home_depot")
    first, second = calibration.halves(log, 0)
    assert drift.measure(first, second, scorer=calibration.lexical_scorer(first)).drifted == []
    assert "label" in drift.measure(first, calibration.raise_label_rate(second, 0.10, seed=0)).drifted
    assert {"query_topic", "product_topic"} <= set(drift.measure(first, calibration.category_mix("home_depot", second)).drifted)


def test_the_evidently_report_holds_the_same_verdicts_with_a_fine_tuned_models_scores(sample_log, trained_model_dir, tmp_path,
                                                                                       monkeypatch):
    from searchtune.ml import modeling

    monkeypatch.setattr(drift, "PREDICTION_ROWS", 400)  # scoring on CPU is the cost; 400 rows a side still shows the wiring
    model, tokenizer, record = modeling.load_trained_model(trained_model_dir)
    first, second = calibration.halves(sample_log, 3)
    scored = {}

    def scorer(rows):  # the same rows are scored for compare() and measure(): once
        key = tuple(rows["query"] + "\t" + rows["product_text"])
        if key not in scored:
            scored[key] = score_frame(model, tokenizer, record.architecture, record.max_length, rows)
        return scored[key]
    summary = drift.compare(first, second, tmp_path, reference_name="production v1's training data",
                            current_name="this run's training data", scorer=scorer)
    assert summary.status == "stable" and summary.drifted_columns == [] and summary.headline.startswith("no drift")
    assert summary.scored_rows == drift.PREDICTION_ROWS and summary.columns == len(drift.SIGNALS)
    measured = drift.measure(first, second, scorer=scorer)  # the same samples and scores: the same numbers
    for column, entry in summary.per_column.items():
        assert entry["score"] == pytest.approx(measured.distances[column], abs=1e-9), column
        assert entry["threshold"] == measured.thresholds[column] and entry["drifted"] is False
    assert (tmp_path / records.DRIFT_HTML_FILE).read_text().lstrip().lower().startswith("<!doctype html")
    assert json.loads((tmp_path / records.DRIFT_JSON_FILE).read_text())["metrics"]


def test_with_no_production_model_there_is_no_reference_and_no_alarm(tmp_path):
    summary = drift.no_reference(tmp_path, "no production model yet", "this run's training data", 5000)
    assert summary.status == "no_reference" and summary.drifted_columns == [] and summary.columns == 0
    assert summary.headline == "no reference yet (no production model yet): nothing to compare, no alarm"
    assert "no reference yet" in (tmp_path / records.DRIFT_HTML_FILE).read_text()
    assert records.DriftSummary.model_validate_json((tmp_path / records.DRIFT_JSON_FILE).read_text()) == summary
