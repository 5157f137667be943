"""Ingest in batches and partitions: same result as the whole table at once, bad rows found where they are,
nothing half-written visible. The batch, partition and row-group sizes are made tiny, so a small file
exercises what a large one does."""

import gzip
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from searchtune.data import sample_data
from searchtune.errors import SearchtuneError
from searchtune.params import IngestParams
from searchtune.steps import ingest, splits
from searchtune.steps.ingestion import files as ingest_files
from searchtune.steps.ingestion import rows as ingest_rows

ROWS = 6000


@pytest.fixture(scope="module")
def log_frame() -> pd.DataFrame:
    """A generated search log: many queries, a few exact duplicates, the sample's columns."""
    frame = pa.concat_tables(sample_data.generate_log(ROWS, seed=3, batch_rows=2500)).to_pandas()
    return pd.concat([frame, frame.iloc[100:130]], ignore_index=True)  # 30 more duplicates


@pytest.fixture
def tiny(monkeypatch):
    """Sizes that make a few thousand rows cross every batch, buffer, partition and row-group boundary."""
    monkeypatch.setattr(ingest_files, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(ingest_files, "PARQUET_BATCH_ROWS", 700)
    monkeypatch.setattr(ingest, "SPILL_BUFFER_ROWS", 900)
    monkeypatch.setattr(ingest, "PARTITION_INPUT_BYTES", 40_000)
    monkeypatch.setattr(ingest, "ROW_GROUP_ROWS", 500)


def expected_splits(frame: pd.DataFrame, params: IngestParams) -> pd.DataFrame:
    """The ingest result computed on the whole table at once, with pandas and Python."""
    clean = pd.DataFrame({
        "query": frame[params.query_column].map(lambda s: " ".join(str(s).split())),
        "product_text": [" | ".join(" ".join(str(v).split()) for v in values if str(v).strip())
                         for values in zip(*(frame[c] for c in params.text_column_list), strict=True)],
        "grade": frame[params.label_column].astype(float),
    }).drop_duplicates()
    clean["query_group"] = clean["query"].map(ingest_rows.query_group)
    position = clean["query_group"].map(ingest_rows.group_position)
    clean["split"] = np.select([position < 0.8, position < 0.9], ["train", "validation"], "test")
    return clean


def read_all(out) -> pd.DataFrame:
    return pd.concat([splits.read_split(str(out), s).assign(split=s) for s in splits.SPLITS], ignore_index=True)


def test_batched_partitioned_ingest_equals_the_whole_table_at_once(tmp_path, tiny, log_frame):
    path = tmp_path / "log.csv"
    log_frame.to_csv(path, index=False)
    params = IngestParams(data=str(path))
    stats = ingest.ingest(str(tmp_path / "out"), params)
    expected = expected_splits(log_frame, params)
    got = read_all(tmp_path / "out")
    assert stats.rows_read == len(log_frame) and stats.rows_rejected == 0
    assert stats.duplicates_dropped == len(log_frame) - len(expected) >= 30
    assert stats.rows_kept == len(got) == len(expected)
    key = ["query", "product_text", "grade"]
    merged = got.merge(expected, on=key, suffixes=("", "_expected"), validate="one_to_one")
    assert len(merged) == len(expected)
    assert (merged["split"] == merged["split_expected"]).all()
    assert (merged["query_group"] == merged["query_group_expected"]).all()
    for split, split_stats in stats.splits.items():
        part = expected[expected["split"] == split]
        assert split_stats.rows == len(part)
        assert split_stats.queries == part["query_group"].nunique()
        assert split_stats.positive_rate == round(float((part["grade"] >= 2.5).mean()), 4)
    # Partitions, row groups and the order within a split follow the query digest.
    train = pq.ParquetFile(tmp_path / "out" / "train.parquet")
    assert train.num_row_groups > 5 and all(train.metadata.row_group(i).num_rows <= 500 for i in range(train.num_row_groups))
    groups = splits.read_split(str(tmp_path / "out"), "train")["query_group"]
    assert groups.is_monotonic_increasing


def test_fingerprint_ignores_files_order_format_compression_and_partitioning(tmp_path, tiny, monkeypatch, log_frame):
    params = IngestParams()
    one = tmp_path / "one.csv"
    log_frame.to_csv(one, index=False)
    reference = ingest.ingest(str(tmp_path / "a"), params.model_copy(update={"data": str(one)})).fingerprint
    folder = tmp_path / "many"
    folder.mkdir()
    shuffled = log_frame.sample(frac=1, random_state=5)
    shuffled.iloc[:2000].to_parquet(folder / "part1.parquet")
    shuffled.iloc[2000:4000].to_json(folder / "part2.jsonl.gz", orient="records", lines=True, compression="gzip")
    shuffled.iloc[4000:].to_csv(folder / "part3.csv.gz", index=False, compression="gzip")
    monkeypatch.setattr(ingest, "PARTITION_INPUT_BYTES", 7_000)  # other partition count
    stats = ingest.ingest(str(tmp_path / "b"), params.model_copy(update={"data": str(folder)}))
    assert stats.fingerprint == reference
    assert len(stats.sources) == 3 and stats.rows_read == len(log_frame)
    # Different content, different fingerprint.
    log_frame.iloc[1:].to_csv(one, index=False)
    assert ingest.ingest(str(tmp_path / "c"), params.model_copy(update={"data": str(one)})).fingerprint != reference


def broken_csv(frame: pd.DataFrame) -> tuple[str, dict[int, str]]:
    """CSV text with bad rows deep inside (past many blocks): row position -> expected reason start."""
    lines = frame.to_csv(index=False).splitlines()
    bad = {}
    for position in (1500, 3100, 3101, 5200):
        cells = lines[position + 1].split(",")
        lines[position + 1] = ",".join(cells + ["extra", "fields"])
        bad[position] = "malformed CSV row: 8 fields, expected 6"
    for position, value in ((2000, "n/a"), (4321, "9")):
        cells = lines[position + 1].rsplit(",", 1)
        lines[position + 1] = f"{cells[0]},{value}"
        bad[position] = f"label {value!r} is not a number" if value == "n/a" else "label 9.0 outside [1, 3]"
    return "\n".join(lines) + "\n", bad


def test_bad_rows_deep_in_a_large_file_are_rejected_at_their_positions(tmp_path, tiny, log_frame):
    frame = log_frame.iloc[:ROWS]
    text, bad = broken_csv(frame)
    path = tmp_path / "log.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(text)
    stats = ingest.ingest(str(tmp_path / "out"), IngestParams(data=str(path)))
    rejects = pd.read_parquet(tmp_path / "out" / "rejects.parquet").sort_values("source_row")
    assert stats.rows_read == ROWS and stats.rows_rejected == len(bad)
    assert list(rejects["source_row"]) == sorted(bad)
    assert set(rejects["source"]) == {str(path)}
    for row in rejects.itertuples():
        assert row.reason.startswith(bad[row.source_row]), (row.source_row, row.reason)
    assert stats.rejects_by_reason == {"malformed CSV row": 4, "label is not a number": 1, "label outside [1, 3]": 1}
    # Every good row kept its own position: the row after a malformed one is the file's next row.
    kept = read_all(tmp_path / "out")
    assert frame.iloc[1501]["search_term"] in set(kept["query"])


def test_bad_json_lines_in_the_middle_are_rejected_with_their_positions(tmp_path, tiny, log_frame):
    frame = log_frame.iloc[:3000]
    lines = frame.to_json(orient="records", lines=True).splitlines()
    lines[1234] = '{"search_term": "broken'
    lines[2345] = '["not", "an", "object"]'
    lines[2500] = lines[2500].replace('"relevance":', '"relevance":"high","was":')
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(lines) + "\n")
    stats = ingest.ingest(str(tmp_path / "out"), IngestParams(data=str(path)))
    rejects = pd.read_parquet(tmp_path / "out" / "rejects.parquet").sort_values("source_row")
    assert list(rejects["source_row"]) == [1234, 2345, 2500]
    assert rejects["reason"].iloc[0].startswith("malformed JSON line")
    assert rejects["reason"].iloc[1].startswith("malformed JSON line: a JSON list, not an object")
    assert rejects["reason"].iloc[2] == "label 'high' is not a number"
    assert stats.rows_read == 3000


def test_too_many_rejects_stop_the_run_with_no_split_visible(tmp_path, tiny, log_frame):
    frame = log_frame.iloc[:4000].copy()
    frame.loc[frame.index[::5], "relevance"] = 7  # 20 %
    path = tmp_path / "log.parquet"
    frame.to_parquet(path)
    with pytest.raises(SearchtuneError, match=r"800 of 4000 rows \(20.0%\) were rejected, above max_reject_ratio 5.0%; "
                                              r"e.g. .*log.parquet:0: label 7.0 outside \[1, 3\]"):
        ingest.ingest(str(tmp_path / "out"), IngestParams(data=str(path)))
    assert sorted(os.listdir(tmp_path / "out")) == ["rejects.parquet"]
    assert len(pd.read_parquet(tmp_path / "out" / "rejects.parquet")) == 800


def test_a_bad_file_after_good_ones_leaves_no_partial_output(tmp_path, tiny, log_frame):
    folder = tmp_path / "logs"
    folder.mkdir()
    log_frame.iloc[:3000].to_csv(folder / "a.csv", index=False)
    (folder / "b.csv").write_text("search_term,product_title\nx,y\n")  # lacks brand and relevance
    with pytest.raises(SearchtuneError, match=r"b.csv: missing column\(s\) 'brand', 'relevance'"):
        ingest.ingest(str(tmp_path / "out"), IngestParams(data=str(folder)))
    assert os.listdir(tmp_path / "out") == []


def test_a_file_cut_off_mid_row_rejects_the_cut_row(tmp_path, tiny, log_frame):
    path = tmp_path / "cut.csv"
    path.write_text(log_frame.iloc[:2000].to_csv(index=False) + '"cordless drill",DEWA')
    stats = ingest.ingest(str(tmp_path / "out"), IngestParams(data=str(path)))
    rejects = pd.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert stats.rows_read == 2001 and list(rejects["source_row"]) == [2000]
    assert rejects["reason"].iloc[0] == "malformed CSV row: 2 fields, expected 6: '\"cordless drill\",DEWA'"


def test_gcs_input_is_streamed(tmp_path, tiny, log_frame, gcs_bucket):
    from searchtune.io import storage

    local = tmp_path / "log.csv.gz"
    log_frame.iloc[:3000].to_csv(local, index=False, compression="gzip")
    storage.upload(str(local), f"{gcs_bucket}/logs/2026-11-24/log.csv.gz")
    stats = ingest.ingest(str(tmp_path / "out"), IngestParams(data=f"{gcs_bucket}/logs/*/*.csv.gz"))
    assert stats.rows_read == 3000 and stats.sources == [f"{gcs_bucket}/logs/2026-11-24/log.csv.gz"]


def test_split_readers_stream_and_sample_with_bounded_memory(tmp_path, tiny, log_frame):
    path = tmp_path / "log.parquet"
    log_frame.to_parquet(path)
    stats = ingest.ingest(str(tmp_path / "out"), IngestParams(data=str(path)))
    out = str(tmp_path / "out")
    chunks = list(splits.iter_split(out, "train", columns=["query", "label"], batch_rows=300))
    assert max(len(c) for c in chunks) <= 300 and sum(len(c) for c in chunks) == stats.splits["train"].rows
    train = splits.read_split(out, "train")
    sample = splits.sample_split(out, "train", 250, seed=4)
    assert len(sample) == 250 and sample.equals(splits.sample_split(out, "train", 250, seed=4))
    assert not sample.equals(splits.sample_split(out, "train", 250, seed=5))
    rows = train.reset_index().merge(sample, on=list(train.columns))["index"]
    assert rows.is_monotonic_increasing and rows.is_unique  # rows of the split, in split order
    assert len(splits.sample_split(out, "test", 10**9)) == stats.splits["test"].rows


def test_stats_json_holds_the_encodings(tmp_path, log_frame):
    path = tmp_path / "log.csv"
    log_frame.iloc[:2000].to_csv(path, index=False)
    ingest.ingest(str(tmp_path / "out"), IngestParams(data=str(path)))
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["encodings"] == {str(path): "utf-8"} and stats["lines_decoded_with_fallback"] == 0
