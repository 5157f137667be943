"""The sample-data generator: deterministic, well-formed, labelled like judgement data."""

import argparse
import json
import re

import numpy as np
import pandas as pd
import pytest

from searchtune.cli import sample_data_command
from searchtune.data import catalog, sample_data
from searchtune.errors import SearchtuneError

SMALL = 300  # queries: enough for stable rates, fast enough for every run


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return sample_data.generate_judgements(n_queries=SMALL, seed=11)


def test_same_arguments_give_identical_frames(frame):
    again = sample_data.generate_judgements(n_queries=SMALL, seed=11)
    pd.testing.assert_frame_equal(frame, again)


def test_other_seed_gives_other_data(frame):
    other = sample_data.generate_judgements(n_queries=SMALL, seed=12)
    assert not other["search_term"].equals(frame["search_term"])


def test_shipped_file_equals_fresh_generation_with_documented_arguments():
    shipped = pd.read_parquet(sample_data.default_sample_path())
    fresh = sample_data.generate_judgements(n_queries=sample_data.SHIPPED_QUERIES, seed=sample_data.SHIPPED_SEED)
    pd.testing.assert_frame_equal(shipped, fresh)
    assert 14_000 <= len(shipped) <= 20_000


def test_readme_documents_the_shipped_arguments():
    readme = catalog._data_file("README.md").read_text(encoding="utf-8")
    command = f"searchtune sample-data -o src/searchtune/data/{sample_data.SHIPPED_FILE} --queries {sample_data.SHIPPED_QUERIES} --seed {sample_data.SHIPPED_SEED}"
    assert command in readme


def test_schema(frame):
    assert list(frame.columns) == sample_data.COLUMNS
    for column in ("search_term", "product_title", "product_description", "brand", "category"):
        assert frame[column].map(lambda v: isinstance(v, str) and v.strip() != "").all(), column
    assert frame["product_uid"].dtype == np.int64
    assert frame["relevance"].dtype == np.float64
    assert not frame.duplicated(["search_term", "product_uid"]).any()
    # A product's text is the same wherever it is judged.
    per_product = frame.groupby("product_uid")[["product_title", "product_description", "brand", "category"]].nunique()
    assert (per_product == 1).all().all()
    assert frame["category"].nunique() >= 8


def test_relevance_is_a_mean_of_three_ratings_on_1_to_3(frame):
    assert frame["relevance"].between(1.0, 3.0).all()
    allowed = {round(total / 3, 2) for total in range(3, 10)}
    assert set(frame["relevance"].unique()) <= allowed
    assert len(set(frame["relevance"].unique())) == 7  # every grade occurs


def test_both_classes_well_represented_at_threshold(frame):
    positive_rate = (frame["relevance"] >= 2.5).mean()
    assert 0.2 <= positive_rate <= 0.5


def test_every_query_has_several_judged_products_with_mixed_labels(frame):
    per_query = frame.groupby("search_term")
    sizes = per_query.size()
    assert sizes.min() >= sample_data.JUDGED_PER_QUERY[0] and sizes.max() <= sample_data.JUDGED_PER_QUERY[1]
    assert frame["search_term"].nunique() == SMALL
    # Most queries have a relevant and an irrelevant product: hard negatives exist.
    mixed = per_query["relevance"].agg(lambda r: (r >= 2.5).any() and (r < 2.5).any())
    assert mixed.mean() > 0.7


def test_queries_share_products(frame):
    queries_per_product = frame.groupby("product_uid")["search_term"].nunique()
    assert (queries_per_product > 1).mean() > 0.5


def test_typo_rate_is_sane():
    # Typos come from their own random stream: switching them off changes nothing else.
    clean = sample_data.generate_judgements(n_queries=SMALL, seed=11, typo_rate=0.0)
    typed = sample_data.generate_judgements(n_queries=SMALL, seed=11, typo_rate=0.12)
    pd.testing.assert_frame_equal(clean.drop(columns="search_term"), typed.drop(columns="search_term"))
    pairs = pd.DataFrame({"clean": clean["search_term"], "typed": typed["search_term"]}).drop_duplicates()
    changed = pairs[pairs["clean"] != pairs["typed"]]
    assert 0.05 <= len(changed) / len(pairs) <= 0.15
    # A typo is one small edit (a swap, a dropped, doubled or wrong letter, a lost space).
    for clean_text, typed_text in changed.itertuples(index=False):
        assert _one_edit_apart(clean_text, typed_text), (clean_text, typed_text)


def _one_edit_apart(a: str, b: str) -> bool:
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        swapped = len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
        return len(diff) == 1 or swapped
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    return len(longer) == len(shorter) + 1 and any(longer[:i] + longer[i + 1 :] == shorter for i in range(len(longer)))


def test_query_styles_range_from_titles_to_jargon(frame):
    terms = set(frame["search_term"])
    titles = {re.sub(r"[.,()]", "", t.lower()) for t in frame["product_title"]}
    assert terms & titles, "some shoppers paste an exact product title"
    vocabulary = sample_data.load_vocabulary()
    jargon = {j for kind in vocabulary for j in kind.jargon}
    assert sum(any(j in term for j in jargon) for term in terms) / len(terms) > 0.15


def test_wrong_attribute_products_are_rated_down():
    # "20v max cordless drill": a 12V drill is the right product type but not relevant.
    frame = sample_data.generate_judgements(n_queries=sample_data.SHIPPED_QUERIES, seed=7, typo_rate=0.0)
    drills = frame[frame["product_title"].str.contains("Cordless .* Drill/Driver Kit", regex=True)]
    asked_20v = drills[drills["search_term"].str.contains("20v max") & ~drills["search_term"].str.contains("sawzall")]
    right = asked_20v[asked_20v["product_title"].str.contains("20V MAX")]["relevance"]
    wrong = asked_20v[~asked_20v["product_title"].str.contains("20V MAX")]["relevance"]
    assert len(right) >= 5 and len(wrong) >= 5
    assert right.mean() - wrong.mean() > 0.8


def test_accessories_that_name_the_tool_are_rated_below_the_tool(frame):
    # "cordless drill": "Drill Bit Set for Cordless Drill" shares every word of the query, the
    # drill fewer; word overlap ranks the accessory first, raters the drill.
    rows = []
    for query, judged in frame.groupby("search_term"):
        fits = judged["product_title"].str.extract(r" for ([A-Z][\w ]+)$", expand=False).str.lower()
        named = judged[fits.notna() & fits.fillna("\0").map(query.__contains__)]
        if len(named):
            rows.append((named["relevance"].mean(), judged.loc[~judged.index.isin(named.index), "relevance"].max()))
    accessory, best_other = np.array(rows).T
    assert len(rows) >= 10
    assert accessory.mean() < 1.8 and best_other.mean() > 2.5


def test_unconstrained_queries_are_common(frame):
    # Most real queries name a need or a type, not a brand or a size: those are where
    # synonyms, jargon and accessories decide, not word overlap with an attribute.
    brands = {brand.lower() for brand in frame["brand"]}
    with_brand = frame["search_term"].drop_duplicates().map(lambda q: any(b in q for b in brands) or bool(re.search(r"\d", q)))
    assert with_brand.mean() < 0.6


def test_bad_arguments_raise_searchtune_error():
    with pytest.raises(SearchtuneError, match="n_queries"):
        sample_data.generate_judgements(n_queries=0)
    with pytest.raises(SearchtuneError, match="typo_rate"):
        sample_data.generate_judgements(n_queries=5, typo_rate=1.5)


def _sample_data_command(argv: list[str]):
    """Parse ``argv`` with the sub-command as the searchtune CLI wires it."""
    parser = argparse.ArgumentParser(prog="searchtune")
    sample_data_command.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


READERS = {"csv": pd.read_csv, "csv.gz": pd.read_csv, "parquet": pd.read_parquet,
           "jsonl": lambda p: pd.read_json(p, lines=True), "jsonl.gz": lambda p: pd.read_json(p, lines=True)}


@pytest.mark.parametrize(("extension", "size"), [("csv", "--queries 20"), ("parquet", "--queries 20"), ("jsonl", "--queries 20"),
                                                 ("csv.gz", "--rows 5000"), ("jsonl.gz", "--rows 5000"), ("parquet", "--rows 5000")])
def test_command_writes_each_format(tmp_path, extension, size):
    import pyarrow as pa

    target = tmp_path / f"judgements.{extension}"
    args = _sample_data_command(["sample-data", "-o", str(target), *size.split(), "--seed", "3"])
    assert args.func(args) == 0
    written = READERS[extension](target)
    expected = (pa.concat_tables(sample_data.generate_log(args.rows, seed=3)).to_pandas() if args.rows
                else sample_data.generate_judgements(n_queries=args.queries, seed=3))
    pd.testing.assert_frame_equal(written, expected, check_dtype=False)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no partial file left behind


def test_command_defaults_are_the_shipped_arguments(tmp_path):
    args = _sample_data_command(["sample-data", "-o", str(tmp_path / "x.csv")])
    assert (args.queries, args.seed) == (sample_data.SHIPPED_QUERIES, sample_data.SHIPPED_SEED)


def test_command_rejects_unknown_extension_and_missing_directory(tmp_path):
    for target, problem in [
        (tmp_path / "out.xlsx", "use .csv, .parquet or .jsonl"),
        (tmp_path / "no" / "out.csv", "does not exist"),
    ]:
        args = _sample_data_command(["sample-data", "-o", str(target), "--queries", "5"])
        with pytest.raises(SearchtuneError, match=problem):
            args.func(args)
    assert list(tmp_path.iterdir()) == []


def test_searchtune_cli_prints_one_line_error(tmp_path, capsys):
    from searchtune.cli import main as cli

    try:
        cli.build_parser()
    except ImportError as missing:  # sibling sub-commands still being written
        pytest.skip(f"searchtune CLI not complete yet: {missing}")
    assert cli.main(["sample-data", "-o", str(tmp_path / "out.xlsx"), "--queries", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("searchtune: error: cannot tell the format") and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_default_sample_path_points_at_the_shipped_parquet():
    path = sample_data.default_sample_path()
    assert path.endswith("sample_judgements.parquet")
    with open(path, "rb") as handle:
        assert handle.read(4) == b"PAR1"


def test_catalog_vocabulary_is_consistent():
    kinds = sample_data.load_vocabulary()
    names = [kind.name for kind in kinds]
    assert len(names) == len(set(names)), "product type names must be unique"
    assert all(kind.parent in names for kind in kinds if kind.parent)
    raw = json.loads(catalog._data_file("sample_catalog.json").read_text(encoding="utf-8"))
    assert len(raw) >= 8


def test_large_log_is_deterministic_and_grows_queries_and_products_with_rows():
    import pyarrow as pa

    small = pa.concat_tables(sample_data.generate_log(30_000, seed=5, batch_rows=7_000)).to_pandas()
    assert small.equals(pa.concat_tables(sample_data.generate_log(30_000, seed=5, batch_rows=7_000)).to_pandas())
    assert list(small.columns) == sample_data.LOG_COLUMNS and len(small) == 30_000
    large = pa.concat_tables(sample_data.generate_log(120_000, seed=5)).to_pandas()
    for frame in (small, large):
        rows_per_query = len(frame) / frame["search_term"].nunique()
        rows_per_product = len(frame) / frame["product_uid"].nunique()
        assert 5 <= rows_per_query <= 9 and 3 <= rows_per_product <= 6, (rows_per_query, rows_per_product)
        assert frame["relevance"].between(1, 3).all() and 0.2 < (frame["relevance"] >= 2.5).mean() < 0.5
        assert frame.duplicated(["search_term", "product_title", "relevance"]).mean() < 0.1  # a few, as in a log
        # A product's uid always comes with the same title.
        assert (frame.groupby("product_uid")["product_title"].nunique() == 1).all()
    with pytest.raises(SearchtuneError, match="rows must be at least 1"):
        next(sample_data.generate_log(0))
