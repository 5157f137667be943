"""Ingest step: read judgement/click logs, validate, quarantine bad rows, split by query.

Output (a directory): ``train.parquet``, ``validation.parquet``, ``test.parquet`` with
the canonical columns below, ``rejects.parquet`` (rows that failed validation, with the
reason), and ``stats.json`` (fingerprint, sources, counts, per-split stats).

Canonical columns: ``query`` (str), ``product_text`` (str, the mapped text columns
joined), ``label`` (int8, 0/1), ``grade`` (float64, the label as read), ``target``
(float32 in [0, 1]: the grade rescaled, a soft training target; equals ``label`` for
binary labels), ``query_group`` (hex digest of the normalised query: the split key).
"""

import dataclasses
import hashlib
import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from searchtune import records
from searchtune.data import sample_data
from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.params import IngestParams

log = logging.getLogger(__name__)

SPLITS = records.SPLITS
CANONICAL_COLUMNS = ["query", "product_text", "label", "grade", "target", "query_group"]
TEXT_SEPARATOR = " | "
READERS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


@dataclasses.dataclass(frozen=True)
class SplitFractions:
    """Shares of queries (not rows) that go to train and validation; the rest is test."""

    train: float = 0.8
    validation: float = 0.1

    def __post_init__(self):
        if not (0 < self.train < 1 and 0 <= self.validation < 1 and self.train + self.validation < 1):
            raise SearchtuneError(
                f"split fractions train={self.train} validation={self.validation} must be in (0, 1) and leave room for test"
            )


def read_table(path: str) -> pd.DataFrame:
    """Read one CSV/TSV, Parquet or JSONL file into a frame of its raw values."""
    suffix = Path(path.split("?")[0]).suffix.lower()
    kind = READERS.get(suffix)
    if kind is None:
        raise SearchtuneError(f"{path}: unsupported file type '{suffix}' (use .csv, .tsv, .parquet or .jsonl)")
    with storage.local_copy(path) as local:
        if os.path.getsize(local) == 0:
            raise SearchtuneError(f"{path}: the file is empty")
        try:
            if kind == "csv":
                # Read everything as text: the label is validated row by row below, and
                # pandas' type guessing would turn one bad value into a whole-column error.
                frame = pd.read_csv(
                    local, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                    encoding="utf-8", encoding_errors="replace",
                )
            elif kind == "parquet":
                frame = pd.read_parquet(local)
            else:
                frame = pd.read_json(local, lines=True, dtype=False)
        except (ValueError, UnicodeDecodeError, OSError, pd.errors.ParserError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise SearchtuneError(f"{path}: cannot be read as {kind}: {first_line}") from None
    if frame.empty:
        raise SearchtuneError(f"{path}: no rows")
    return frame


def input_columns(params: IngestParams) -> list[str]:
    return [params.query_column, *params.text_column_list, params.label_column]


def read_sources(data: str, params: IngestParams) -> tuple[pd.DataFrame, list[str]]:
    """Read every file under ``data`` (file, folder or glob; local or gs://) and keep the mapped columns."""
    sources = storage.expand(data)
    frames = []
    for source in sources:
        frame = read_table(source)
        columns = input_columns(params)
        missing = [column for column in columns if column not in frame.columns]
        if missing:
            raise SearchtuneError(
                f"{source}: missing column(s) {', '.join(repr(c) for c in missing)}; "
                f"columns found: {', '.join(repr(str(c)) for c in frame.columns)}"
            )
        frame = frame[columns].copy()
        frame["source"] = source
        frame["source_row"] = np.arange(len(frame), dtype=np.int64)
        frames.append(frame)
        log.info("read %d rows from %s", len(frame), source)
    return pd.concat(frames, ignore_index=True), sources


def _clean_text(values: pd.Series) -> pd.Series:
    text = values.astype("string").fillna("").str.replace(r"\s+", " ", regex=True).str.strip()
    return text.mask(text.str.lower().isin(["nan", "none", "null"]), "")


def validate(raw: pd.DataFrame, params: IngestParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split raw rows into canonical clean rows and rejected rows with a reason each."""
    query = _clean_text(raw[params.query_column])
    text_parts = [_clean_text(raw[column]) for column in params.text_column_list]
    product_text = text_parts[0]
    for part in text_parts[1:]:
        both = (product_text != "") & (part != "")
        product_text = (product_text + np.where(both, TEXT_SEPARATOR, "") + part).str.strip()
    grade = pd.to_numeric(raw[params.label_column], errors="coerce").astype("float64")
    grade = grade.where(np.isfinite(grade))

    reason = pd.Series("", index=raw.index, dtype="object")
    label_text = raw[params.label_column].astype("string").fillna("")

    def reject(mask: pd.Series, why) -> None:
        mask = mask & (reason == "")
        if mask.any():
            reason[mask] = why(mask) if callable(why) else why

    reject(query == "", "missing or empty query")
    reject(product_text == "", f"missing or empty product text ({', '.join(params.text_column_list)})")
    reject(grade.isna(), lambda m: "label " + label_text[m].str.slice(0, 40).map(repr) + " is not a number")
    if params.binary_labels:
        reject(~grade.isin([0.0, 1.0]), lambda m: "label " + grade[m].map(str) + " is not 0 or 1 (binary labels)")
        label = grade
        target = grade
    else:
        out_of_range = (grade < params.label_min) | (grade > params.label_max)
        reject(out_of_range, lambda m: "label " + grade[m].map(str) + f" outside [{params.label_min:g}, {params.label_max:g}]")
        label = (grade >= params.positive_threshold).astype("float64")
        target = (grade - params.label_min) / (params.label_max - params.label_min)

    bad = reason != ""
    rejects = raw[bad].astype(str).assign(reason=reason[bad])
    clean = pd.DataFrame(
        {
            "query": query[~bad].astype(str),
            "product_text": product_text[~bad].astype(str),
            "label": label[~bad].astype("int8"),
            "grade": grade[~bad],
            "target": target[~bad].clip(0, 1).astype("float32"),
        }
    )
    clean["query_group"] = clean["query"].map(query_group)
    return clean.reset_index(drop=True), rejects.reset_index(drop=True)


def query_group(query: str) -> str:
    """Split key: a digest of the normalised query, stable across runs and machines."""
    normalised = " ".join(query.lower().split())
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:16]


def assign_splits(groups: pd.Series, fractions: SplitFractions) -> pd.Series:
    """Map each query group to train/validation/test by its hash, so a query never leaks across splits."""
    position = groups.map(lambda g: int(g[:12], 16) / float(16**12))
    return pd.Series(
        np.select(
            [position < fractions.train, position < fractions.train + fractions.validation],
            ["train", "validation"],
            "test",
        ),
        index=groups.index,
    )


def fingerprint(clean: pd.DataFrame) -> str:
    """Order-independent digest of the clean rows: the same data in other files or order hashes the same."""
    row_hashes = np.sort(pd.util.hash_pandas_object(clean[["query", "product_text", "grade"]], index=False).to_numpy())
    return hashlib.sha256(row_hashes.tobytes()).hexdigest()


def split_stats(frame: pd.DataFrame) -> records.SplitStats:
    return records.SplitStats(
        rows=int(len(frame)),
        queries=int(frame["query_group"].nunique()),
        positive_rate=round(float(frame["label"].mean()), 4) if len(frame) else math.nan,
    )


def reason_counts(rejects: pd.DataFrame) -> dict[str, int]:
    """Rejected rows per kind of reason (the value itself left out: 'label is not a number')."""
    if rejects.empty:
        return {}
    kinds = rejects["reason"].str.replace(r"label .* (is not|outside)", r"label \1", regex=True)
    return {str(kind): int(count) for kind, count in kinds.value_counts().items()}


def ingest(
    output_dir: str,
    params: IngestParams,
    fractions: SplitFractions = SplitFractions(),
    rejects_path: str | None = None,
) -> records.IngestStats:
    """Run the ingest step.

    Args:
        output_dir: local directory that receives the splits and ``stats.json``.
        params: where the data is (``params.data``; empty = the bundled sample) and which
            columns hold query, product text and label.
        fractions: query shares of the train and validation splits.
        rejects_path: where to write the rejected rows (default ``output_dir/rejects.parquet``).

    Returns:
        The stats, also written to ``stats.json``.

    Raises:
        SearchtuneError: unreadable or empty input, a missing column, too many rejects,
            or a split left without both classes.
    """
    raw, sources = read_sources(params.data or sample_data.default_sample_path(), params)
    clean, rejects = validate(raw, params)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rejects_path = rejects_path or str(out / records.REJECTS_FILE)
    Path(rejects_path).parent.mkdir(parents=True, exist_ok=True)
    rejects.to_parquet(rejects_path, index=False)
    reject_ratio = len(rejects) / len(raw)
    by_reason = reason_counts(rejects)
    log.info("validated %d rows: %d clean, %d rejected (%.2f%%)", len(raw), len(clean), len(rejects), 100 * reject_ratio)
    for why, count in list(by_reason.items())[:5]:
        log.info("  rejected %d: %s", count, why)
    if reject_ratio > params.max_reject_ratio:
        examples = "; ".join(f"{r.source}:{r.source_row}: {r.reason}" for r in rejects.head(3).itertuples())
        raise SearchtuneError(
            f"{len(rejects)} of {len(raw)} rows ({reject_ratio:.1%}) were rejected, above max_reject_ratio "
            f"{params.max_reject_ratio:.1%}; e.g. {examples}; all rejected rows are in {rejects_path}"
        )

    before = len(clean)
    clean = clean.drop_duplicates(subset=["query", "product_text", "grade"]).reset_index(drop=True)
    duplicates = before - len(clean)
    log.info("dropped %d exact duplicate rows", duplicates)

    clean["split"] = assign_splits(clean["query_group"], fractions)
    split_stats_by_name = {}
    for split in SPLITS:
        part = clean[clean["split"] == split][CANONICAL_COLUMNS].reset_index(drop=True)
        if part["label"].nunique() < 2:
            raise SearchtuneError(
                f"the {split} split has {len(part)} rows and {part['label'].nunique()} label class(es); "
                "need both positives and negatives (more data, or check --positive-threshold)"
            )
        part.to_parquet(out / records.split_file(split), index=False)
        split_stats_by_name[split] = split_stats(part)
        log.info("wrote %s: %s", split, split_stats_by_name[split])
    stats = records.IngestStats(
        fingerprint=fingerprint(clean),
        sources=sources,
        column_mapping=params.model_dump(exclude={"data", "max_reject_ratio"}),
        split_fractions=dataclasses.asdict(fractions),
        rows_read=int(len(raw)),
        rows_rejected=int(len(rejects)),
        rejects_by_reason=by_reason,
        duplicates_dropped=int(duplicates),
        rows_kept=int(len(clean)),
        splits=split_stats_by_name,
    )
    stats.write(output_dir)
    log.info("data fingerprint %s", stats.fingerprint)
    return stats


def read_split(splits_dir: str, split: str) -> pd.DataFrame:
    """Load one split written by :func:`ingest`."""
    return pd.read_parquet(Path(splits_dir) / records.split_file(split))


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
    return sample_parquet(str(Path(splits_dir) / records.split_file(split)), rows, seed, columns)


def sample_parquet(path: str, rows: int, seed: int = 0, columns: list[str] | None = None) -> pd.DataFrame:
    """A deterministic sample of at most ``rows`` rows of a Parquet file, one row group in memory at a time.

    Row positions are drawn first (from the row count in the file's footer), then only the
    row groups that hold a drawn position are read, so memory is bounded by ``rows`` and one
    row group whatever the file's size.

    Raises:
        SearchtuneError: the file is missing or lacks one of ``columns``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

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
