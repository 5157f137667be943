"""``searchtune sample-data``: write the synthetic judgements in the input format of a run."""

import argparse
import logging
import os
import tempfile

import pandas as pd

from searchtune.cli import exit_codes
from searchtune.data.sample_data import SHIPPED_QUERIES, SHIPPED_SEED, generate_judgements
from searchtune.errors import SearchtuneError

log = logging.getLogger(__name__)


WRITERS = {
    ".csv": lambda frame, path: frame.to_csv(path, index=False),
    ".parquet": lambda frame, path: frame.to_parquet(path, index=False),
    ".jsonl": lambda frame, path: frame.to_json(path, orient="records", lines=True),
}


def _check_target(path: str) -> tuple[str, str]:
    extension = os.path.splitext(path)[1].lower()
    if extension not in WRITERS:
        raise SearchtuneError(f"cannot tell the format of {path!r}: use .csv, .parquet or .jsonl")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise SearchtuneError(f"output directory does not exist: {directory}")
    return extension, directory


def write_frame(frame: pd.DataFrame, path: str) -> None:
    """Write a judgement frame as CSV, Parquet or JSON Lines, chosen by file extension.

    The file appears complete or not at all: it is written beside the target and
    renamed into place.

    Args:
        frame: the judgements.
        path: target file ending in ``.csv``, ``.parquet`` or ``.jsonl``.
    """
    extension, directory = _check_target(path)
    handle, partial = tempfile.mkstemp(dir=directory, prefix=".sample-", suffix=extension)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    try:
        WRITERS[extension](frame, partial)
        os.chmod(partial, 0o666 & ~umask)  # mkstemp makes it private; the result is an ordinary file
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    log.info("wrote %d rows to %s", len(frame), path)


def add_parser(subparsers) -> None:
    """Add the ``sample-data`` sub-command to the searchtune CLI.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    parser = subparsers.add_parser(
        "sample-data",
        help="write the synthetic search judgement data (the input format of a run)",
        description="Generate deterministic e-commerce search judgements and write them "
        "as CSV, Parquet or JSON Lines (chosen by the file extension).",
    )
    parser.add_argument("-o", "--output", required=True, help="file to write (.csv, .parquet or .jsonl)")
    parser.add_argument("--queries", type=int, default=SHIPPED_QUERIES, help="distinct queries (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=SHIPPED_SEED, help="random seed (default: %(default)s)")
    parser.set_defaults(func=_run_sample_data)


def _run_sample_data(args: argparse.Namespace) -> int:
    _check_target(args.output)  # before the work, not after it
    frame = generate_judgements(n_queries=args.queries, seed=args.seed)
    write_frame(frame, args.output)
    return exit_codes.OK
