"""``searchtune sample-data``: write the synthetic judgements, or a large log, in the input format of a run."""

import argparse
import gzip
import logging
import os
import tempfile
from collections.abc import Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from searchtune.cli import exit_codes
from searchtune.data.sample_data import SHIPPED_QUERIES, SHIPPED_SEED, generate_judgements, generate_log
from searchtune.errors import SearchtuneError

log = logging.getLogger(__name__)

FORMATS = (".csv", ".csv.gz", ".parquet", ".jsonl", ".jsonl.gz")


def _format(path: str) -> str:
    name = path.lower()
    return next((f for f in sorted(FORMATS, key=len, reverse=True) if name.endswith(f)), os.path.splitext(name)[1])


def _check_target(path: str) -> tuple[str, str]:
    extension = _format(path)
    if extension not in FORMATS:
        raise SearchtuneError(f"cannot tell the format of {path!r}: use .csv, .parquet or .jsonl (.csv.gz, .jsonl.gz)")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise SearchtuneError(f"output directory does not exist: {directory}")
    return extension, directory


def _write_tables(tables: Iterable[pa.Table], path: str, extension: str) -> int:
    """Stream tables into one file of the format ``extension``; returns the rows written."""
    rows, writer = 0, None
    opener = gzip.open if extension.endswith(".gz") else open
    with opener(path, "wb") as handle:
        for table in tables:
            if extension.startswith(".csv"):
                writer = writer or pa_csv.CSVWriter(handle, table.schema)
            elif extension == ".parquet":
                writer = writer or pq.ParquetWriter(handle, table.schema)
            if writer is not None:
                writer.write_table(table)
            else:
                handle.write(table.to_pandas().to_json(orient="records", lines=True).encode("utf-8"))
            rows += table.num_rows
        if writer is not None:
            writer.close()
    return rows


def write_tables(tables: Iterable[pa.Table], path: str) -> int:
    """Write tables as CSV, Parquet or JSON Lines (``.gz`` for CSV and JSON Lines), chosen by the file name.

    The file appears complete or not at all: it is written beside the target and renamed
    into place.

    Args:
        tables: the rows, in tables of one schema.
        path: target file ending in one of ``FORMATS``.

    Returns:
        The number of rows written.
    """
    extension, directory = _check_target(path)
    handle, partial = tempfile.mkstemp(dir=directory, prefix=".sample-", suffix=extension)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    try:
        rows = _write_tables(tables, partial, extension)
        os.chmod(partial, 0o666 & ~umask)  # mkstemp makes it private; the result is an ordinary file
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    log.info("wrote %d rows to %s", rows, path)
    return rows


def write_frame(frame: pd.DataFrame, path: str) -> None:
    """Write a judgement frame as CSV, Parquet or JSON Lines, chosen by file extension (see :func:`write_tables`)."""
    write_tables([pa.Table.from_pandas(frame, preserve_index=False)], path)


def add_parser(subparsers) -> None:
    """Add the ``sample-data`` sub-command to the searchtune CLI.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    parser = subparsers.add_parser(
        "sample-data",
        help="write the synthetic search judgement data, or a large search log (the input format of a run)",
        description="Generate deterministic e-commerce search judgements and write them as CSV, Parquet or JSON "
        "Lines (chosen by the file extension; .csv.gz and .jsonl.gz compress). With --rows, write a search log "
        "of that many rows built from them (millions of rows in seconds, for scale tests).",
    )
    parser.add_argument("-o", "--output", required=True, help="file to write (.csv, .parquet, .jsonl, .csv.gz, .jsonl.gz)")
    parser.add_argument("--queries", type=int, default=SHIPPED_QUERIES, help="distinct queries (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=0, help="write a large log of this many rows instead (default: off)")
    parser.add_argument("--seed", type=int, default=SHIPPED_SEED, help="random seed (default: %(default)s)")
    parser.set_defaults(func=_run_sample_data)


def _run_sample_data(args: argparse.Namespace) -> int:
    _check_target(args.output)  # before the work, not after it
    if args.rows:
        write_tables(generate_log(args.rows, seed=args.seed), args.output)
    else:
        write_frame(generate_judgements(n_queries=args.queries, seed=args.seed), args.output)
    return exit_codes.OK
