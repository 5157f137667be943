"""``prune`` of a model the registry does not hold: one line, and nothing created.

Found by bench/schedule_simulation.py: a mistyped registry path or model name used to get
``<root>/<model>/`` created (by the prune lock) and "deleted 0 version(s)" with exit 0.
"""

import os
import sys

import pytest

from searchtune.errors import SearchtuneError
from searchtune.registry import ModelRegistry

sys.path.insert(0, os.path.dirname(__file__))  # tests/ is no package (pytest --import-mode=importlib)
from registry_helpers import MODEL, register, snapshot  # noqa: E402


@pytest.mark.parametrize("dry_run", [False, True])
def test_pruning_a_model_that_is_not_stored_is_refused_and_writes_nothing(registry_root, tmp_path, dry_run):
    registry = ModelRegistry(registry_root)
    with pytest.raises(SearchtuneError, match=rf"no model '{MODEL}' in .*: nothing stored there to prune"):
        registry.prune(MODEL, 3, dry_run=dry_run, actor="test", min_age_minutes=0)
    assert snapshot(registry.root) == {}

    register(registry, tmp_path, "a")
    before = snapshot(registry.root)
    prefix_of_the_name = MODEL[:-1]  # a listing by prefix must not take MODEL's files for this one's
    with pytest.raises(SearchtuneError, match=rf"no model '{prefix_of_the_name}' in "):
        registry.prune(prefix_of_the_name, 3, dry_run=dry_run, actor="test", min_age_minutes=0)
    assert snapshot(registry.root) == before
    assert registry.prune(MODEL, 3, dry_run=dry_run, actor="test", min_age_minutes=0).decisions[0].version == 1
