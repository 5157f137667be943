"""Faults of the input the world hands the ingest step, on real files: nested and duplicated columns,
another delimiter, corrupt and truncated archives, symbolic link loops, files that vanish, too few
queries, and a base model path that is not there. Each is one line (a SearchtuneError) naming the
file and the cause, before any training; a whole run of some of them is in test_hostile_runs.py."""

import gzip
import os
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from searchtune.errors import SearchtuneError
from searchtune.ml import modeling
from searchtune.params import IngestParams
from searchtune.steps import ingest, splits

MAPPING = IngestParams(query_column="q", text_columns="title,brand", label_column="rel")


def judgements(n_queries: int = 60, per_query: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame([{"q": f"query {q} rheostat", "title": f"Product {q}-{p}", "brand": f"Brand{p}",
                          "rel": float(rng.choice([1.0, 3.0]))} for q in range(n_queries) for p in range(per_query)])


def run(tmp_path, data, **params):
    return ingest.ingest(str(tmp_path / "out"), MAPPING.model_copy(update={"data": str(data), **params}))


def refused(tmp_path, data, *parts: str, **params) -> str:
    """Ingest ``data``, expect a one-line refusal holding every one of ``parts``; no split may be published."""
    with pytest.raises(SearchtuneError) as caught:
        run(tmp_path, data, **params)
    message = str(caught.value)
    assert "\n" not in message and all(part in message for part in parts), message
    assert not [split for split in splits.SPLITS if (tmp_path / "out" / f"{split}.parquet").exists()], "a split published"
    return message


# --------------------------------------------------------------------------- columns by type
@pytest.mark.parametrize(("column", "values", "role", "shown"), [
    ("q", lambda f: [[q, "x"] for q in f["q"]], "query", "a list per row (list<element: string>)"),
    ("q", lambda f: [{"text": q} for q in f["q"]], "query", "a record per row (struct<text: string>)"),
    ("title", lambda f: [[t] for t in f["title"]], "text", "a list per row"),
    ("rel", lambda f: [[r] for r in f["rel"]], "label", "a list per row (list<element: double>)"),
    ("q", lambda f: np.linspace(0, 1, len(f)), "query", "values of type double"),
])
def test_a_parquet_column_that_is_not_a_scalar_of_its_kind_is_refused_with_its_name_and_type(tmp_path, column, values, role,
                                                                                             shown):
    """Today a list query column became the text '["rheostat", "x"]': "370 rows read, 0 rejected", and trained on."""
    frame = judgements()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.set_column(frame.columns.get_loc(column), column, pa.array(values(frame)))
    pq.write_table(table, tmp_path / "nested.parquet")
    refused(tmp_path, tmp_path / "nested.parquet", "nested.parquet: ", f"the {role} column '{column}' holds {shown}")


def test_nested_json_values_are_refused_whether_arrow_or_the_line_parser_reads_them(tmp_path):
    frame = judgements()
    lists = frame.assign(q=[[q, "x"] for q in frame["q"]])
    lists.to_json(tmp_path / "lists.jsonl", orient="records", lines=True)
    refused(tmp_path, tmp_path / "lists.jsonl", "the query column 'q' holds a list per row")
    # One object among strings: Arrow refuses the mixed block and the line parser reads it.
    lines = frame.to_json(orient="records", lines=True).splitlines()
    lines[7] = lines[7].replace('"q":"query 1 rheostat"', '"q":{"en":"rheostat"}')
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    refused(tmp_path, tmp_path / "mixed.jsonl", "the query column 'q' holds a JSON object in some rows")


def test_a_whole_number_query_and_numeric_or_dated_text_are_still_read(tmp_path):
    frame = judgements().assign(q=lambda f: f.index // 5 + 1000, brand=pd.Timestamp("2024-01-01"))
    frame.to_parquet(tmp_path / "numbers.parquet")
    assert run(tmp_path, tmp_path / "numbers.parquet").rows_kept == 300


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_a_duplicated_column_name_is_refused(tmp_path, suffix):
    """Today the first 'q' was used without a word (CSV), or a KeyError traceback (Parquet)."""
    frame = judgements()
    path = tmp_path / f"twice{suffix}"
    if suffix == ".csv":
        path.write_text("q,title,brand,rel,q\n" + "".join(f"{r.q},{r.title},{r.brand},{r.rel},other\n"
                                                          for r in frame.itertuples()))
    elif suffix == ".parquet":
        pq.write_table(pa.table([pa.array(frame[c]) for c in ["q", "title", "brand", "rel", "q"]],
                                names=["q", "title", "brand", "rel", "q"]), path)
    else:
        path.write_text("".join(f'{{"q": "{r.q}", "title": "{r.title}", "brand": "b", "rel": {r.rel}, "q": "other"}}\n'
                                for r in frame.itertuples()))
    refused(tmp_path, path, f"twice{suffix}: column 'q' appears 2 times (columns 1, 5)")


def test_a_header_that_splits_into_one_column_names_the_delimiter_it_looks_like(tmp_path):
    rows = "".join(f"query {i};Drill, cordless {i};Brand;{1 + 2 * (i % 2)}\n" for i in range(300))
    # Commas inside the values: today "Expected 1 columns, got 2".
    (tmp_path / "semicolons.csv").write_text("q;title;brand;rel\n" + rows)
    refused(tmp_path, tmp_path / "semicolons.csv", "semicolons.csv: the header is one column when split by commas but looks "
            "semicolon-delimited ('q;title;brand;rel'); export it comma-separated (.csv) or tab-separated (.tsv)")
    (tmp_path / "tabs.csv").write_text("q\ttitle\tbrand\trel\n" + rows.replace(";", "\t"))
    refused(tmp_path, tmp_path / "tabs.csv", "looks tab-delimited", "name it .tsv")
    judgements().to_csv(tmp_path / "commas.tsv", index=False)
    refused(tmp_path, tmp_path / "commas.tsv", "split by tabs but looks comma-delimited", "name it .csv")


# --------------------------------------------------------------------------- archives, links, vanishing files
def test_a_gzip_truncated_at_a_byte_offset_names_the_file_and_where(tmp_path):
    """Today an EOFError traceback, the file not named."""
    data = gzip.compress(judgements(600).to_csv(index=False).encode())
    cut = len(data) * 2 // 3
    (tmp_path / "cut.csv.gz").write_bytes(data[:cut])
    refused(tmp_path, tmp_path / "cut.csv.gz", "cut.csv.gz: truncated compressed data: the file ends at byte "
            f"{cut:,} before its gzip stream does")
    lines = gzip.compress(judgements().to_json(orient="records", lines=True).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(lines[:-20])
    refused(tmp_path, tmp_path / "cut.jsonl.gz", "cut.jsonl.gz: truncated compressed data")


def test_a_corrupt_gzip_or_one_that_is_no_gzip_names_the_file(tmp_path):
    """Today zlib.error / BadGzipFile tracebacks."""
    data = bytearray(gzip.compress(judgements().to_csv(index=False).encode()))
    data[-6] ^= 0xFF  # the CRC of the data
    (tmp_path / "crc.csv.gz").write_bytes(bytes(data))
    refused(tmp_path, tmp_path / "crc.csv.gz", "crc.csv.gz: corrupt compressed data near byte", "CRC check failed")
    data = bytearray(gzip.compress(judgements().to_csv(index=False).encode()))
    data[20:40] = b"\xff" * 20  # inside the deflate stream
    (tmp_path / "garbled.csv.gz").write_bytes(bytes(data))
    refused(tmp_path, tmp_path / "garbled.csv.gz", "garbled.csv.gz: corrupt compressed data near byte")
    judgements().to_csv(tmp_path / "plain.csv.gz", index=False, compression=None)
    refused(tmp_path, tmp_path / "plain.csv.gz", "plain.csv.gz: not gzip data, though its name ends in .gz")


def test_a_symbolic_link_loop_in_the_data_folder_is_named(tmp_path):
    """Today an OSError [Errno 40] traceback."""
    folder = tmp_path / "logs"
    folder.mkdir()
    judgements().to_csv(folder / "day1.csv", index=False)
    os.symlink("day3.csv", folder / "day2.csv")
    os.symlink("day2.csv", folder / "day3.csv")
    message = refused(tmp_path, folder, "a symbolic link loop (it leads back to itself through day")
    assert message.startswith((f"{folder}/day2.csv: ", f"{folder}/day3.csv: ")), message
    refused(tmp_path, folder / "*.csv", "a symbolic link loop")  # a glob matches it too
    refused(tmp_path, folder / "day2.csv", f"{folder}/day2.csv: a symbolic link loop")  # named alone
    os.remove(folder / "day3.csv")
    refused(tmp_path, folder, f"{folder}/day2.csv: a symbolic link to day3.csv, which does not exist")


@pytest.fixture
def remove_when_opened():
    """Removes a file the moment another one is opened, through a real audit hook on ``open``: the
    ingest step lists both, reads the first, and finds the second gone when its turn comes."""
    plan: dict = {}

    def hook(event, args):
        if event == "open" and plan and str(args[0]) == plan.get("trigger"):
            os.remove(plan.pop("victim"))
            plan.clear()

    sys.addaudithook(hook)  # hooks cannot be removed: an empty plan leaves it idle after the test
    yield lambda trigger, victim: plan.update(trigger=str(trigger), victim=str(victim))
    plan.clear()


def test_a_file_that_vanishes_while_the_input_is_read_is_named(tmp_path, remove_when_opened):
    folder = tmp_path / "logs"
    folder.mkdir()
    frame = judgements(200)
    frame.iloc[:500].to_csv(folder / "a.csv", index=False)
    frame.iloc[500:].to_csv(folder / "b.csv", index=False)
    remove_when_opened(folder / "a.csv", folder / "b.csv")
    refused(tmp_path, folder, f"{folder}/b.csv: vanished while the input was read", "removed or renamed before it was read")
    assert not (folder / "b.csv").exists()


# --------------------------------------------------------------------------- messages that name the cause
def test_too_few_queries_for_a_split_by_query_says_so_with_the_counts(tmp_path):
    """Today "validation split has 0 rows and 0 label class(es)", which blames the labels."""
    judgements(n_queries=1).to_csv(tmp_path / "one.csv", index=False)
    message = refused(tmp_path, tmp_path / "one.csv", "1 query (5 rows) is too few to split by query: each query goes whole "
                      "to train, validation or test (80%/10%/10% of the queries), and the ", "splits got none (queries per "
                      "split: train ", "; more data, with more distinct queries")
    assert "label" not in message
    judgements(n_queries=3, per_query=1).to_csv(tmp_path / "three.csv", index=False)
    refused(tmp_path, tmp_path / "three.csv", "3 queries (3 rows) are too few to split by query", "got none")


def test_a_test_split_smaller_than_the_gate_needs_stops_before_training(tmp_path):
    judgements(n_queries=60).to_csv(tmp_path / "small.csv", index=False)
    stats = run(tmp_path, tmp_path / "small.csv")  # the check is off unless the gate's threshold is passed in
    test_queries = stats.splits["test"].queries
    assert 0 < test_queries < 30
    with pytest.raises(SearchtuneError, match=rf"^{test_queries} test queries < min_test_queries 30: the gate could never "
                                              r"bless a model trained on this data; more data, or lower --min-test-queries$"):
        ingest.ingest(str(tmp_path / "gated"), MAPPING.model_copy(update={"data": str(tmp_path / "small.csv")}),
                      min_test_queries=30)
    assert not (tmp_path / "gated" / "test.parquet").exists()
    ingest.ingest(str(tmp_path / "gated"), MAPPING.model_copy(update={"data": str(tmp_path / "small.csv")}),
                  min_test_queries=test_queries)


def test_a_base_model_path_that_does_not_exist_says_so(tmp_path):
    """Today "Repo id must be in the form 'repo_name' or 'namespace/repo_name'" from huggingface_hub."""
    for path in (str(tmp_path / "no-such-model"), "./models/mine", "a/b/c"):
        with pytest.raises(SearchtuneError, match=rf"^base model '{path}': no such folder \(a local model folder, or a "
                                                  "Hugging Face id"):
            modeling.load_tokenizer(path)
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(SearchtuneError, match="weights.bin': a file, not a model folder"):
        modeling.load_tokenizer(str(tmp_path / "weights.bin"))
    with pytest.raises(SearchtuneError, match="the folder holds no config.json nor tokenizer files"):
        modeling.load_tokenizer(str(tmp_path))
    modeling.check_local_base_model("sentence-transformers/all-MiniLM-L6-v2")  # a hub id is left to transformers
