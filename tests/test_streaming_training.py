"""Tokenize into shards on several processes, memory-mapped splits, vectorised collation, batch orders, the loader."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from searchtune import records
from searchtune.ml import batching, modeling, scoring, tokens
from searchtune.params import IngestParams, ModelParams
from searchtune.steps import ingest, splits, tokenize


@pytest.fixture(scope="module")
def many_row_groups(tmp_path_factory, sample_file):
    """The session's sample data ingested into row groups of 256 rows (several tokenize tasks per split)."""
    out = tmp_path_factory.mktemp("splits_small_groups")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest, "ROW_GROUP_ROWS", 256)
        ingest.ingest(str(out), IngestParams(data=sample_file))
    return str(out)


def shard_table(folder) -> pa.Table:
    paths = sorted(folder.glob("part-*.arrow"))
    return pa.concat_tables(pa.ipc.open_file(pa.memory_map(str(p))).read_all() for p in paths)


@pytest.mark.parametrize("architecture", ["bi-encoder", "cross-encoder"])
def test_tokenize_on_several_processes_equals_one_process_and_the_list_encoder(tmp_path, many_row_groups, monkeypatch,
                                                                                architecture):
    params = ModelParams(architecture=architecture, max_length=16)
    one = tokenize.tokenize(many_row_groups, str(tmp_path / "one"), params)
    monkeypatch.setattr(tokenize, "TASK_ROWS", 256)
    monkeypatch.setattr(tokenize, "POOL_MIN_ROWS", 0)
    pooled = tokenize.tokenize(many_row_groups, str(tmp_path / "pooled"), params)
    assert pooled.splits["train"]["shards"] > one.splits["train"]["shards"] >= 1
    for split in records.SPLITS:
        a, b = shard_table(tmp_path / "one" / split), shard_table(tmp_path / "pooled" / split)
        assert a.equals(b), split
        assert {k: v for k, v in one.splits[split].items() if k != "shards"} == \
               {k: v for k, v in pooled.splits[split].items() if k != "shards"}
    # The same ids as encoding the split's rows directly, row for row.
    frame = splits.read_split(many_row_groups, "test")
    tokenizer = modeling.load_tokenizer(modeling.resolve_base_model(""))
    columns, _ = tokens.encode_pairs(tokenizer, architecture, frame["query"].tolist(), frame["product_text"].tolist(), 16)
    table = shard_table(tmp_path / "pooled" / "test")
    for name, ids in columns.items():
        assert table.column(name).to_pylist() == ids
    assert table.column("label").to_pylist() == frame["label"].tolist()
    assert [f"{k:016x}" for k in table.column("query_key").to_pylist()] == frame["query_group"].tolist()


def test_truncation_keeps_the_first_ids_and_the_last():
    rng = np.random.default_rng(0)
    lists = [list(rng.integers(1, 100, size=n)) for n in rng.integers(1, 30, size=200)]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])])
    values = np.concatenate(lists)
    new_offsets, (new_values,) = tokens.truncate(offsets, [values], 8)
    got = [list(new_values[new_offsets[i] : new_offsets[i + 1]]) for i in range(len(lists))]
    assert got == [x if len(x) <= 8 else x[:7] + x[-1:] for x in lists]


def test_length_stats_from_histograms_equal_numpy():
    lengths = np.random.default_rng(1).integers(3, 90, size=5001)
    histogram = np.bincount(lengths, minlength=tokenize.HISTOGRAM_BINS)
    stats = tokenize.length_stats(histogram, int(lengths.max()), 64)
    assert stats == {"mean": round(float(lengths.mean()), 2), "p50": int(np.percentile(lengths, 50)),
                     "p95": int(np.percentile(lengths, 95)), "max": int(lengths.max()),
                     "truncated_rate": round(float((lengths > 64).mean()), 4)}


def naive_collate(split_lists: dict[str, list], rows, pad_id: int) -> dict[str, np.ndarray]:
    """Row-by-row padding with Python lists: what the vectorised collation must equal."""
    out = {}
    for field, lists in split_lists.items():
        width = max(len(lists[r]) for r in rows)
        pad = pad_id if "type" not in field else 0
        out[field] = np.array([lists[r] + [pad] * (width - len(lists[r])) for r in rows])
        if "type" not in field:
            out[field.replace("_ids", "_mask")] = np.array([[1] * len(lists[r]) + [0] * (width - len(lists[r])) for r in rows])
    return out


@pytest.mark.parametrize("architecture", ["bi-encoder", "cross-encoder"])
def test_memory_mapped_split_collates_like_row_by_row_padding(tmp_path, many_row_groups, monkeypatch, architecture):
    monkeypatch.setattr(tokenize, "TASK_ROWS", 256)
    monkeypatch.setattr(tokenize, "ENCODE_ROWS", 100)  # many record batches per shard
    tokenize.tokenize(many_row_groups, str(tmp_path), ModelParams(architecture=architecture, max_length=24))
    split = batching.TokenizedSplit.open(tmp_path / "train", architecture)
    table = shard_table(tmp_path / "train")
    lists = {f: table.column(f).to_pylist() for f in batching.FIELDS[architecture]}
    assert len(split.chunk_starts) > 10 and len(split) == table.num_rows
    assert list(split.lengths) == [max(len(lists[f][i]) for f in lists if "type" not in f) for i in range(len(split))]
    rng = np.random.default_rng(2)
    for _ in range(5):
        rows = rng.choice(len(split), size=37, replace=False)
        batch = split.collate(rows, pad_id=0)
        for name, expected in naive_collate(lists, rows, 0).items():
            np.testing.assert_array_equal(batch[name].numpy(), expected)
        np.testing.assert_array_equal(batch["label"].numpy(), table.column("label").to_numpy()[rows])
        np.testing.assert_array_equal(batch["target"].numpy(), table.column("target").to_numpy()[rows])
    # A seeded subset addresses the same rows without copying the columns.
    subset = batching.TokenizedSplit.open(tmp_path / "train", architecture, max_rows=50, seed=3)
    chosen = np.sort(np.random.default_rng(3).choice(len(split), 50, replace=False))
    assert len(subset) == 50
    np.testing.assert_array_equal(subset.collate(np.arange(5), 0)[batching.FIELDS[architecture][0]],
                                  split.collate(chosen[:5], 0)[batching.FIELDS[architecture][0]])
    with pytest.raises(Exception, match="tokenized for another architecture"):
        batching.TokenizedSplit.open(tmp_path / "train", "bi-encoder" if architecture == "cross-encoder" else "cross-encoder")


def test_batch_orders_cover_each_row_once_shard_by_rank_and_resume():
    lengths = np.random.default_rng(0).integers(3, 60, size=10_001).astype(np.int16)
    sampler = batching.LengthGroupedBatches(lengths, 32, seed=7)
    order = sampler.batches(0)
    assert sorted(np.concatenate(list(order)).tolist()) == list(range(10_001))
    assert len(order) == sampler.steps(1) == 313
    again = sampler.batches(0)
    assert all((a == b).all() for a, b in zip(order, again, strict=True))
    assert not all((a == b).all() for a, b in zip(order, sampler.batches(1), strict=True))
    resumed = order[100:]
    assert len(resumed) == 213 and (resumed[0] == order[100]).all()
    shards = [order.shard(rank, 3) for rank in range(3)]
    assert [len(s) for s in shards] == [104, 104, 104]
    seen = np.concatenate([b for s in shards for b in s])
    assert len(seen) == len(set(seen.tolist()))
    ranked = batching.LengthGroupedBatches(lengths, 32, seed=7, rank=1, world_size=3)
    assert all((a == b).all() for a, b in zip(ranked.batches(0), shards[1], strict=True))
    assert ranked.steps(2) == 2 * 104
    with pytest.raises(Exception, match="rank 3 is not in"):
        order.shard(3, 3)


def test_loader_with_worker_processes_gives_the_same_batches(tmp_path, many_row_groups):
    tokenize.tokenize(many_row_groups, str(tmp_path), ModelParams(max_length=24))
    split = batching.TokenizedSplit.open(tmp_path / "train", "bi-encoder")
    order = batching.LengthGroupedBatches(split.lengths, 16, seed=1).batches(0)[:12]
    device = torch.device("cpu")
    inline = list(batching.loader(split, order, 0, device, workers=0))
    workers = list(batching.loader(split, order, 0, device, workers=2, prefetch=2))
    assert len(inline) == len(workers) == 12
    for a, b in zip(inline, workers, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_scoring_in_chunks_equals_scoring_at_once(trained_model_dir, splits_dir, monkeypatch):
    test = splits.read_split(splits_dir, "test")
    model, tokenizer, record = modeling.load_trained_model(trained_model_dir)
    whole = scoring.score_frame(model, tokenizer, record.architecture, record.max_length, test)
    monkeypatch.setattr(scoring, "CHUNK_ROWS", 97)
    chunked = scoring.score_frame(model, tokenizer, record.architecture, record.max_length, test)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)
    assert len(whole) == len(test)
