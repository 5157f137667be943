"""Ingest step on real files: formats, column mapping, rejects, duplicates, query splits."""

import json

import numpy as np
import pandas as pd
import pytest

from searchtune.errors import SearchtuneError
from searchtune.params import IngestParams
from searchtune.steps import ingest, splits

MAPPING = IngestParams(query_column="q", text_columns="title,brand", label_column="rel", positive_threshold=2.5)


def judgements(n_queries: int = 60, per_query: int = 5, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(n_queries):
        for p in range(per_query):
            rows.append({"q": f"query {q} cordless drill", "title": f"Product {q}-{p} drill", "brand": f"Brand{p}",
                         "rel": float(rng.choice([1.0, 1.67, 2.33, 2.67, 3.0]))})
    return pd.DataFrame(rows)


def run(tmp_path, data, mapping=MAPPING, out="out", **params):
    """Ingest ``data`` into ``tmp_path/out`` with the column mapping and any other parameters."""
    return ingest.ingest(str(tmp_path / out), mapping.model_copy(update={"data": str(data), **params}))


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_reads_each_format_and_writes_canonical_splits(tmp_path, suffix):
    frame = judgements()
    path = tmp_path / f"data{suffix}"
    {".csv": lambda: frame.to_csv(path, index=False), ".parquet": lambda: frame.to_parquet(path),
     ".jsonl": lambda: frame.to_json(path, orient="records", lines=True)}[suffix]()
    stats = run(tmp_path, path)
    assert stats.rows_read == 300 and stats.rows_rejected == 0 and stats.rows_kept == 300
    assert sum(s.rows for s in stats.splits.values()) == 300
    train = pd.read_parquet(tmp_path / "out" / "train.parquet")
    assert list(train.columns) == splits.CANONICAL_COLUMNS
    assert train["product_text"].iloc[0].endswith(" | Brand0") or " | Brand" in train["product_text"].iloc[0]
    expected = (frame["rel"] >= 2.5).mean()
    total_positive = sum(s.positive_rate * s.rows for s in stats.splits.values())
    assert total_positive == pytest.approx(expected * 300, abs=0.01 * 300)
    on_disk = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert on_disk["fingerprint"] == stats.fingerprint


def test_folder_and_glob_read_every_file(tmp_path):
    frame = judgements(n_queries=200)
    folder = tmp_path / "logs"
    folder.mkdir()
    frame.iloc[:500].to_csv(folder / "day1.csv", index=False)
    frame.iloc[500:].to_parquet(folder / "day2.parquet")
    stats = run(tmp_path, folder)
    assert stats.rows_read == 1000 and len(stats.sources) == 2
    stats_glob = run(tmp_path, folder / "*.csv", out="glob")
    assert stats_glob.rows_read == 500
    # The same rows in other files hash to the same fingerprint.
    frame.sample(frac=1, random_state=3).to_parquet(tmp_path / "shuffled.parquet")
    assert run(tmp_path, tmp_path / "shuffled.parquet", out="o2").fingerprint == stats.fingerprint


def test_missing_column_names_it_and_lists_found(tmp_path):
    path = tmp_path / "data.csv"
    judgements().drop(columns=["brand"]).to_csv(path, index=False)
    with pytest.raises(SearchtuneError, match=r"missing column\(s\) 'brand'; columns found: 'q', 'title', 'rel'"):
        run(tmp_path, path)


def test_empty_file_and_garbage_file_fail_clearly(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(SearchtuneError, match="empty.csv: the file is empty"):
        run(tmp_path, empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("q,title,brand,rel\n")
    with pytest.raises(SearchtuneError, match="header.csv: no rows"):
        run(tmp_path, header_only)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(SearchtuneError, match="garbage.parquet: cannot be read as parquet"):
        run(tmp_path, garbage)
    with pytest.raises(SearchtuneError, match="unsupported file type '.xlsx'"):
        run(tmp_path, tmp_path / "x.xlsx") if (tmp_path / "x.xlsx").write_text("x") else None


def corrupt(frame: pd.DataFrame, share: float) -> tuple[pd.DataFrame, int]:
    """Break every k-th row in one of four ways; return the frame and how many rows were broken."""
    frame = frame.astype({"rel": object}).copy()
    broken = list(range(0, len(frame), round(1 / share)))
    for i, row in enumerate(broken):
        kind = i % 4
        if kind == 0:
            frame.loc[row, "q"] = "   "
        elif kind == 1:
            frame.loc[row, ["title", "brand"]] = ""
        elif kind == 2:
            frame.loc[row, "rel"] = "very relevant"
        else:
            frame.loc[row, "rel"] = 7
    return frame, len(broken)


def test_ten_percent_malformed_rows_are_quarantined_with_reasons(tmp_path):
    frame, broken = corrupt(judgements(), 0.10)
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(SearchtuneError, match=rf"{broken} of 300 rows \(10.0%\) were rejected, above max_reject_ratio 5.0%"):
        run(tmp_path, path)
    stats = run(tmp_path, path, max_reject_ratio=0.2)
    assert stats.rows_rejected == broken and stats.rows_kept == 300 - broken
    rejects = pd.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert len(rejects) == broken
    reasons = set(rejects["reason"])
    assert "missing or empty query" in reasons
    assert "missing or empty product text (title, brand)" in reasons
    assert "label 'very relevant' is not a number" in reasons
    assert "label 7.0 outside [1, 3]" in reasons
    assert set(rejects["source_row"].astype(int)) == set(range(0, 300, 10))


def test_fifty_percent_malformed_rows_fail(tmp_path):
    frame, broken = corrupt(judgements(), 0.5)
    path = tmp_path / "data.jsonl"
    frame.to_json(path, orient="records", lines=True)
    with pytest.raises(SearchtuneError, match=rf"{broken} of 300 rows \(50.0%\) were rejected"):
        run(tmp_path, path)


def test_exact_duplicates_dropped_and_binary_labels(tmp_path):
    frame = judgements()
    frame["rel"] = (frame["rel"] >= 2.5).astype(int)
    doubled = pd.concat([frame, frame.iloc[:40]], ignore_index=True)
    path = tmp_path / "clicks.parquet"
    doubled.to_parquet(path)
    binary = IngestParams(query_column="q", text_columns="title", label_column="rel", binary_labels=True)
    stats = run(tmp_path, path, binary)
    assert stats.duplicates_dropped == 40 and stats.rows_kept == 300
    frame.loc[3, "rel"] = 2
    frame.to_parquet(path)
    stats = run(tmp_path, path, binary, max_reject_ratio=0.5)
    rejects = pd.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert list(rejects["reason"]) == ["label 2.0 is not 0 or 1 (binary labels)"]


def test_split_is_by_query_and_stable(tmp_path):
    frame = judgements(n_queries=200)
    path = tmp_path / "data.parquet"
    frame.to_parquet(path)
    run(tmp_path, path)
    frames = {s: pd.read_parquet(tmp_path / "out" / f"{s}.parquet") for s in splits.SPLITS}
    queries = {s: set(f["query"]) for s, f in frames.items()}
    assert not queries["train"] & queries["test"] and not queries["train"] & queries["validation"]
    assert not queries["validation"] & queries["test"]
    assert 0.7 < len(queries["train"]) / 200 < 0.9
    # Another run, other row order, one more query: every old query stays in its split.
    extra = pd.concat([frame.sample(frac=1, random_state=1), judgements(n_queries=1, seed=9).assign(q="brand new query")])
    extra.to_parquet(path)
    run(tmp_path, path, out="again")
    for split in splits.SPLITS:
        again = set(pd.read_parquet(tmp_path / "again" / f"{split}.parquet")["query"])
        assert queries[split] <= again
