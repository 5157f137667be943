"""The recipe experiments' query-grouped batches (bench/recipes/sampling.py): coverage, whole queries, caps, determinism, sharding, bad input."""

import sys
from pathlib import Path

import numpy as np
import pytest

from searchtune.errors import SearchtuneError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "recipes"))  # the recipes' own modules
from sampling import QueryGroupedBatches  # noqa: E402


def queries(rows_per_query: list[int]) -> list[str]:
    ids = [f"q{q}" for q, n in enumerate(rows_per_query) for _ in range(n)]
    return list(np.random.default_rng(5).permutation(ids))  # rows of a query are scattered, as in real data


def test_every_row_once_whole_chunks_and_caps():
    ids = np.asarray(queries([1, 3, 7, 12, 16, 2, 5] * 20))
    sampler = QueryGroupedBatches(ids, batch_rows=32, max_rows_per_query=8, seed=1)
    batches = sampler.batches(0)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(len(ids)))
    assert all(len(b) <= 32 for b in batches)
    for batch in batches:
        _, counts = np.unique(ids[batch], return_counts=True)
        assert counts.max() <= 8
    # A query of at most 8 rows lands in one batch, whole.
    for query in {q for q in ids if (ids == q).sum() <= 8}:
        assert sum(1 for b in batches if query in set(ids[b])) == 1
    # A 16-row query is cut into two chunks of 8; a 12-row one into 6 + 6.
    sixteen = next(q for q in set(ids) if (ids == q).sum() == 16)
    assert sorted(int((ids[b] == sixteen).sum()) for b in batches if sixteen in set(ids[b])) == [8, 8]
    twelve = next(q for q in set(ids) if (ids == q).sum() == 12)
    assert sorted(int((ids[b] == twelve).sum()) for b in batches if twelve in set(ids[b])) == [6, 6]


def test_batches_are_mostly_full():
    ids = queries([7] * 300)
    batches = QueryGroupedBatches(ids, batch_rows=32, max_rows_per_query=8, seed=0).batches(0)
    assert np.mean([len(b) for b in batches]) >= 28  # four whole 7-row queries per batch


def test_order_depends_only_on_seed_and_epoch():
    ids = queries([4, 9, 2, 6] * 30)
    a = QueryGroupedBatches(ids, 16, 8, seed=3)
    b = QueryGroupedBatches(ids, 16, 8, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a.batches(2), b.batches(2), strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a.batches(0), a.batches(1), strict=False))
    other_seed = QueryGroupedBatches(ids, 16, 8, seed=4).batches(2)
    assert not all(np.array_equal(x, y) for x, y in zip(a.batches(2), other_seed, strict=False))


def test_ranks_split_the_same_global_order():
    ids = queries([3, 5, 8, 1] * 25)
    whole = QueryGroupedBatches(ids, 16, 8, seed=9).global_batches(1)
    shards = [QueryGroupedBatches(ids, 16, 8, seed=9, rank=r, world_size=3).batches(1) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # every rank runs the same number of steps
    usable = len(whole) - len(whole) % 3
    for rank, shard in enumerate(shards):
        assert all(np.array_equal(x, y) for x, y in zip(shard, whole[rank:usable:3], strict=True))
    assert QueryGroupedBatches(ids, 16, 8, seed=9, rank=0, world_size=3).steps(2) == len(shards[0]) + len(
        QueryGroupedBatches(ids, 16, 8, seed=9, rank=0, world_size=3).batches(0))


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_rows": 4, "max_rows_per_query": 8}, "max_rows_per_query"),
    ({"max_rows_per_query": 0}, "max_rows_per_query"),
    ({"rank": 2, "world_size": 2}, "rank 2"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(SearchtuneError, match=message):
        QueryGroupedBatches(queries([3, 3]), **kwargs)


def test_empty_input_and_too_many_ranks():
    with pytest.raises(SearchtuneError, match="at least one row"):
        QueryGroupedBatches([])
    with pytest.raises(SearchtuneError, match="cannot feed"):
        QueryGroupedBatches(queries([2]), batch_rows=4, max_rows_per_query=2, world_size=3).batches(0)
