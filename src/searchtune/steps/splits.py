"""The splits the ingest step writes, and how every later step reads them.

The ingest step writes ``train``, ``validation`` and ``test`` (``records.split_file``) as
Parquet files with :data:`CANONICAL_SCHEMA`, in row groups of :data:`ROW_GROUP_ROWS`; the
tokenize, evaluate, index and register steps read them here, never through the ingest
step's own module.
"""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from searchtune import records
from searchtune.errors import SearchtuneError

SPLITS = records.SPLITS
CANONICAL_COLUMNS = ["query", "product_text", "label", "grade", "target", "query_group"]
CANONICAL_SCHEMA = pa.schema([("query", pa.string()), ("product_text", pa.string()), ("label", pa.int8()),
                              ("grade", pa.float64()), ("target", pa.float32()), ("query_group", pa.string())])
ROW_GROUP_ROWS = 65536


def split_path(splits_dir: str, split: str) -> str:
    """The file of one split written by the ingest step."""
    return str(Path(splits_dir) / records.split_file(split))


def read_split(splits_dir: str, split: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Load one split written by the ingest step (whole: for the test and validation splits)."""
    return pd.read_parquet(split_path(splits_dir, split), columns=columns)


def iter_split(splits_dir: str, split: str, columns: list[str] | None = None, batch_rows: int = ROW_GROUP_ROWS
               ) -> Iterator[pd.DataFrame]:
    """One split in frames of at most ``batch_rows`` rows, in file order (bounded memory)."""
    for batch in pq.ParquetFile(split_path(splits_dir, split)).iter_batches(batch_size=batch_rows, columns=columns):
        yield batch.to_pandas()


def sample_split(splits_dir: str, split: str, rows: int, seed: int = 0, columns: list[str] | None = None) -> pd.DataFrame:
    """A deterministic sample of at most ``rows`` rows of one split, read with bounded memory.

    Args:
        splits_dir: output of the ingest step.
        split: ``train``, ``validation`` or ``test``.
        rows: the most rows to return.
        seed: seed of the sample: the same split and seed give the same rows.
        columns: the columns to return (default: all).

    Returns:
        The sampled rows in their order in the split.
    """
    return sample_parquet(split_path(splits_dir, split), rows, seed, columns)


def sample_parquet(path: str, rows: int, seed: int = 0, columns: list[str] | None = None) -> pd.DataFrame:
    """A deterministic sample of at most ``rows`` rows of a Parquet file, one row group in memory at a time.

    Row positions are drawn first (from the row count in the file's footer), then only the
    row groups that hold a drawn position are read, so memory is bounded by ``rows`` and one
    row group whatever the file's size.

    Raises:
        SearchtuneError: the file is missing or lacks one of ``columns``.
    """
    try:
        parquet = pq.ParquetFile(path)
    except FileNotFoundError:
        raise SearchtuneError(f"{path}: missing") from None
    names = parquet.schema_arrow.names
    missing = [c for c in columns or [] if c not in names]
    if missing:
        raise SearchtuneError(f"{path}: missing column(s) {', '.join(missing)}")
    total = parquet.metadata.num_rows
    picks = np.arange(total) if total <= rows else np.sort(np.random.default_rng(seed).choice(total, rows, replace=False))
    pieces, start = [], 0
    for group in range(parquet.num_row_groups):
        end = start + parquet.metadata.row_group(group).num_rows
        local = picks[np.searchsorted(picks, start) : np.searchsorted(picks, end)] - start
        if len(local):
            pieces.append(parquet.read_row_group(group, columns=columns).take(local))
        start = end
    table = pa.concat_tables(pieces) if pieces else parquet.schema_arrow.empty_table().select(columns or names)
    return table.to_pandas()
