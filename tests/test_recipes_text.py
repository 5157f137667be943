"""The recipe experiments' text normalisation (bench/recipes/text.py): mojibake, units, number joins, idempotence."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "recipes"))  # the recipes' own modules
from text import normalize  # noqa: E402


@pytest.mark.parametrize("raw, expected", [
    ("Paslode 3 in. x 0.120-Gauge 30\u00e5\u00a1 Galvanized", "Paslode 3 inch x 0.120-Gauge 30 degree Galvanized"),
    ("Leviton 180\u00e8_ Occupancy Detector", "Leviton 180 degree Occupancy Detector"),
    ("Men\u0089\u00db\u00aas Boots", "Men's Boots"),
    ("2x4x8 lumber", "2 x 4 x 8 lumber"),
    ("2 X 4", "2 x 4"),
    ('3/4" pvc', "3/4 inch pvc"),
    ("1-1/2 in. x 72 in.", "1-1/2 inch x 72 inch"),
    ("10ft ladder", "10 foot ladder"),
    ("8 ft. post", "8 foot post"),
    ("5 gal. bucket", "5 gallon bucket"),
    ("50 lb. bag", "50 pound bag"),
    ("20-Volt Max", "20 volt Max"),
    ("sq. ft. tile", "square foot tile"),
    ("  many   spaces ", "many spaces"),
])
def test_normalize(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize("text", ["in the kitchen", "a 2 a b", "v neck", "window film", "a/c unit"])
def test_words_that_only_look_like_units_stay(text):
    assert normalize(text) == text


@pytest.mark.parametrize("text", ["2x4x8 10ft 3/4\" 30\u00e5\u00a1", "1-1/2 in. x 72 in. 5 gal. sq. ft.", "Men\u0089\u00db\u00aas"])
def test_idempotent(text):
    assert normalize(normalize(text)) == normalize(text)
