"""The gate's rule: absolute floor, champion comparison, fail closed."""

import math

from searchtune.steps.blessing import decide


def test_no_champion_only_the_floor_applies():
    assert decide(0.71, 0.7, 0.0, None)["blessed"]
    record = decide(0.69, 0.7, 0.0, None)
    assert not record["blessed"] and "below min_auc 0.7000" in record["reason"]
    assert record["champion"] is None and record["candidate"]["auc"] == 0.69


def test_champion_comparison_with_allowed_drop():
    champion = {"version": 3, "auc": 0.80}
    assert decide(0.80, 0.7, 0.0, champion)["blessed"]
    worse = decide(0.79, 0.7, 0.0, champion)
    assert not worse["blessed"] and "production v3 AUC 0.8000" in worse["reason"]
    assert decide(0.79, 0.7, 0.02, champion)["blessed"]
    assert not decide(0.75, 0.7, 0.02, champion)["blessed"]
    # The floor still applies when the champion is weak.
    assert not decide(0.65, 0.7, 0.0, {"version": 1, "auc": 0.6})["blessed"]


def test_fails_closed_on_missing_numbers():
    assert not decide(math.nan, 0.5, 0.0, None)["blessed"]
    assert not decide(None, 0.5, 0.0, None)["blessed"]
    record = decide(0.9, 0.5, 0.0, {"version": 2, "auc": None})
    assert not record["blessed"] and "failing closed" in record["reason"]
