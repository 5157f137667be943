"""Ingest step: stream judgement/click logs, validate, quarantine bad rows, split by query.

Output (a directory): ``train.parquet``, ``validation.parquet``, ``test.parquet`` with
the canonical columns below (one Parquet file per split, in row groups of
``ROW_GROUP_ROWS``: the shards that tokenize reads in parallel), ``rejects.parquet``
(rows that failed validation, with file, row position and reason), and ``stats.json``
(fingerprint, sources, encodings, counts, per-split stats).

Canonical columns: ``query`` (str), ``product_text`` (str, the mapped text columns
joined), ``label`` (int8, 0/1), ``grade`` (float64, the label as read), ``target``
(float32 in [0, 1]: the grade rescaled, a soft training target; equals ``label`` for
binary labels), ``query_group`` (hex digest of the normalised query: the split key).

Memory stays bounded whatever the input size; two passes:

1. Every file is read in record batches (pyarrow's CSV, JSON and Parquet readers;
   ``.gz`` decompressed on the fly; text checked and decoded to UTF-8 by
   :class:`TextStream`). Each batch is validated with Arrow kernels; rejected rows
   stream into ``rejects.parquet``; clean rows are spilled, by a range of their query
   digest, into partition files (Arrow IPC, lz4) in a temporary folder.
2. Each partition (about ``PARTITION_INPUT_BYTES`` of input) is read alone, sorted by
   (query digest, query, product text, grade), exact duplicates (now adjacent) dropped,
   and appended to its split's file. Counts, positive rates, query counts and the
   fingerprint are accumulated on the way; the partitions are ranges of the digest, so
   the output order, and so the fingerprint, do not depend on the input's files or order.

Memory: one input batch plus one partition. Disk: the clean rows once more, compressed.
The splits appear under their names only when all of them are complete.

Longer than 300 lines: reading (formats, compression, encodings), validation and the
two passes are one data path, and every part depends on the others' row positions.
"""

from __future__ import annotations

import binascii
import codecs
import dataclasses
import gzip
import hashlib
import io
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from searchtune import records
from searchtune.data import sample_data
from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.params import IngestParams

log = logging.getLogger(__name__)

SPLITS = records.SPLITS
CANONICAL_COLUMNS = ["query", "product_text", "label", "grade", "target", "query_group"]
CANONICAL_SCHEMA = pa.schema([("query", pa.string()), ("product_text", pa.string()), ("label", pa.int8()),
                              ("grade", pa.float64()), ("target", pa.float32()), ("query_group", pa.string())])
TEXT_SEPARATOR = " | "
READERS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
BLOCK_BYTES = 2 << 20  # text read and parsed per batch (the CSV reader keeps several in flight)
PARQUET_BATCH_ROWS = 65536
ROW_GROUP_ROWS = 65536
PARTITION_INPUT_BYTES = 32 << 20  # input bytes per spill partition (compressed input counts COMPRESSED_EXPANSION times)
COMPRESSED_EXPANSION = 4
SPILL_BUFFER_ROWS = 262144
MAX_PARTITIONS = 1024
# Python's str.isspace() set, which str.split()/strip() use, spelled for RE2.
WHITESPACE = r"[\s\v\x{1c}-\x{1f}\x{85}\p{Z}]+"
MESSY_WHITESPACE = r"[\t\n\v\f\r\x{1c}-\x{1f}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]|  |^ | $"
NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
NULL_WORDS = pa.array(["nan", "none", "null"])


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


# --------------------------------------------------------------------------- text decoding
class TextStream(io.RawIOBase):
    """A text file's bytes as UTF-8, checked line by line; what pyarrow's CSV and JSON readers read.

    A byte-order mark picks the encoding (UTF-8, UTF-16, UTF-32) and is dropped. Otherwise
    the bytes must be UTF-8: with ``encoding="auto"`` the first line that is not stops the
    run, naming the file, the byte offset and the line; with a declared ASCII-compatible
    encoding (cp1252, latin-1, ...) such lines are decoded with it and counted in
    ``fallback_lines`` (so a file mixing UTF-8 and Latin-1 lines reads right); a declared
    UTF-16/32 encoding decodes the whole file. Characters are never replaced.
    """

    def __init__(self, raw, path: str, encoding: str = "auto"):
        super().__init__()
        self.raw, self.path, self.fallback_lines = raw, path, 0
        self.offset = self.lines = 0  # bytes and newlines of the input consumed so far
        self.pending, self.carry = b"", b""
        head = raw.read(4)
        boms = [(codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
                (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")]
        bom, name = next(((b, n) for b, n in boms if head.startswith(b)), (b"", ""))
        self.carry, self.offset = head[len(bom):], len(bom)
        self.transcoder = None
        self.fallback = None if encoding == "auto" else encoding
        if name and name != "utf-8":
            self.transcoder, self.used = codecs.getincrementaldecoder(name)(), f"{name} (BOM)"
        elif name:
            self.used = "utf-8 (BOM)"
        elif self.fallback and not _ascii_compatible(self.fallback):
            self.transcoder, self.used = codecs.getincrementaldecoder(self.fallback)(), self.fallback
        else:
            self.used = "utf-8" if not self.fallback else f"utf-8, other lines {self.fallback}"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            block = self._next_block()
            if block is None:
                return 0
            self.pending = block
        size = min(len(buffer), len(self.pending))
        buffer[:size] = self.pending[:size]
        self.pending = self.pending[size:]
        return size

    def _next_block(self) -> bytes | None:
        data = self.raw.read(BLOCK_BYTES)
        if self.transcoder is not None:
            text = self.transcoder.decode(self.carry + data, final=not data)
            self.carry = b""
            return text.encode("utf-8") if (text or data) else None
        block = self.carry + data
        if not block:
            return None
        cut = block.rfind(b"\n") + 1 if data else len(block)
        if cut == 0:  # no newline yet: read on (a line longer than a block)
            self.carry = block
            return b""
        block, self.carry = block[:cut], block[cut:]
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            block = self._decode_lines(block)
        self.offset += cut
        self.lines += block.count(b"\n")
        return block

    def _decode_lines(self, block: bytes) -> bytes:
        out, offset = [], self.offset
        for number, line in enumerate(block.split(b"\n")):
            try:
                line.decode("utf-8")
                out.append(line)
            except UnicodeDecodeError as error:
                where = f"{self.path}: not valid UTF-8 at byte {offset + error.start} (line {self.lines + number + 1})"
                if self.fallback is None:
                    shown = line[max(0, error.start - 30) : error.start + 30]
                    raise SearchtuneError(
                        f"{where}: {shown!r}; name the file's encoding with --encoding (encoding=), e.g. cp1252 for "
                        f"Windows/Latin-1 exports, in which this reads {shown.decode('cp1252', 'replace')!r}") from None
                try:
                    out.append(line.decode(self.fallback).encode("utf-8"))
                except UnicodeDecodeError:
                    raise SearchtuneError(f"{where}, nor valid {self.fallback}: {line[:80]!r}") from None
                self.fallback_lines += 1
            offset += len(line) + 1
        return b"\n".join(out)


def _ascii_compatible(encoding: str) -> bool:
    sample = "\n,\t{}\"abc09"
    try:
        return sample.encode(encoding) == sample.encode("ascii")
    except (LookupError, UnicodeError):
        return False


# --------------------------------------------------------------------------- reading
@dataclasses.dataclass
class Source:
    """One input file being read: what the reader learned about it on the way."""

    path: str
    kind: str
    compressed: bool
    rows: int = 0  # data rows seen, malformed ones included
    encoding: str = ""
    fallback_lines: int = 0
    malformed: list = dataclasses.field(default_factory=list)  # (row position, reason) not yet collected


def file_kind(path: str) -> tuple[str, bool]:
    """``(reader kind, gzip-compressed)`` of a file by its name (``data.csv.gz`` -> ``("csv", True)``).

    Raises:
        SearchtuneError: an unsupported file type.
    """
    name = Path(path.split("?")[0]).name.lower()
    compressed = name.endswith(".gz")
    suffix = Path(name[:-3] if compressed else name).suffix
    kind = READERS.get(suffix)
    if kind is None or (compressed and kind == "parquet"):
        shown = suffix + (".gz" if compressed else "")
        raise SearchtuneError(f"{path}: unsupported file type '{shown}' (use .csv, .tsv, .parquet or .jsonl, optionally .gz)")
    return kind, compressed


def _cannot_read(source: Source, error: Exception, rows: int | None = None):
    text = str(error).strip()
    first_line = text.splitlines()[0] if text else type(error).__name__
    near = f" near row {rows}" if rows else ""
    return SearchtuneError(f"{source.path}: cannot be read as {source.kind}{near}: {first_line}")


def _check_columns(source: Source, found: list[str], columns: list[str]) -> None:
    missing = [column for column in columns if column not in found]
    if missing:
        raise SearchtuneError(f"{source.path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
                              f"columns found: {', '.join(repr(str(c)) for c in found)}")


def _open_text(source: Source, local: str, encoding: str) -> TextStream:
    raw = gzip.open(local, "rb") if source.compressed else open(local, "rb")  # noqa: SIM115 - closed by the reader
    return TextStream(raw, source.path, encoding)


def read_batches(source: Source, local: str, columns: list[str], params: IngestParams) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """Record batches of the mapped ``columns`` of one file, with each row's 0-based position in it.

    Rows the parser cannot split (a CSV line with too many fields, a JSON line that is not
    JSON) are left out and added to ``source.malformed`` with their position.
    """
    if os.path.getsize(local) == 0:
        raise SearchtuneError(f"{source.path}: the file is empty")
    if source.kind == "parquet":
        yield from _parquet_batches(source, local, columns)
    elif source.kind == "csv":
        yield from _csv_batches(source, local, columns, params)
    else:
        yield from _json_batches(source, local, columns, params)
    if source.rows == 0:
        raise SearchtuneError(f"{source.path}: no rows")


def _parquet_batches(source: Source, local: str, columns: list[str]):
    try:
        parquet = pq.ParquetFile(local)
    except (pa.ArrowException, OSError) as error:
        raise _cannot_read(source, error) from None
    _check_columns(source, parquet.schema_arrow.names, columns)
    source.encoding = "parquet (utf-8)"
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            positions = np.arange(source.rows, source.rows + batch.num_rows)
            source.rows += batch.num_rows
            yield pa.Table.from_batches([batch]), positions
    except (pa.ArrowException, OSError) as error:
        raise _cannot_read(source, error, source.rows) from None


def _csv_batches(source: Source, local: str, columns: list[str], params: IngestParams):
    delimiter = "\t" if ".tsv" in Path(source.path).name.lower() else ","
    parse = {"delimiter": delimiter, "newlines_in_values": True}
    try:
        with _open_text(source, local, params.encoding) as head:
            header = pa_csv.open_csv(head, read_options=pa_csv.ReadOptions(block_size=1 << 20), parse_options=pa_csv.ParseOptions(**parse))
            found = header.schema.names
    except pa.ArrowInvalid as error:
        if "Empty CSV file" in str(error):
            raise SearchtuneError(f"{source.path}: the file is empty") from None
        raise _cannot_read(source, error) from None
    _check_columns(source, found, columns)
    pending_bad: list[int] = []  # positions of malformed rows not yet stepped over

    def malformed(row) -> str:
        pending_bad.append(row.number - 2)  # row 1 is the header
        source.malformed.append((row.number - 2, f"malformed CSV row: {row.actual_columns} fields, expected "
                                                 f"{row.expected_columns}: {row.text[:200]!r}"))
        return "skip"

    with _open_text(source, local, params.encoding) as stream:
        try:
            # One thread: the parser then knows each bad row's number.
            reader = pa_csv.open_csv(
                stream, read_options=pa_csv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False),
                parse_options=pa_csv.ParseOptions(**parse, invalid_row_handler=malformed),
                convert_options=pa_csv.ConvertOptions(include_columns=columns, column_types={c: pa.string() for c in columns}))
            for batch in reader:
                positions = np.arange(source.rows, source.rows + batch.num_rows + len(pending_bad))
                if pending_bad:
                    bad = np.array(pending_bad)
                    positions = positions[~np.isin(positions, bad)][: batch.num_rows]
                    # A malformed row already reported may lie past this batch (the parser reads ahead).
                    pending_bad[:] = bad[bad > positions[-1]].tolist() if batch.num_rows else bad.tolist()
                if batch.num_rows:
                    source.rows = int(positions[-1]) + 1
                    yield pa.Table.from_batches([batch]), positions
        except pa.ArrowInvalid as error:
            raise _cannot_read(source, error, source.rows) from None
        source.rows = max([source.rows, *(p + 1 for p in pending_bad)])
        source.encoding, source.fallback_lines = stream.used, stream.fallback_lines


def _json_batches(source: Source, local: str, columns: list[str], params: IngestParams):
    first = True
    with _open_text(source, local, params.encoding) as stream:
        carry = b""
        while True:
            data = stream.read(BLOCK_BYTES)
            block = carry + data
            cut = block.rfind(b"\n") + 1 if data else len(block)
            block, carry = block[:cut], block[cut:]
            if block.strip():
                table, positions = _json_table(source, block, columns)
                if first:
                    _check_columns(source, table.column_names, columns)
                    first = False
                yield _with_nulls(table, columns), positions
            if not data:
                break
        source.encoding, source.fallback_lines = stream.used, stream.fallback_lines


def _with_nulls(table: pa.Table, columns: list[str]) -> pa.Table:
    return pa.table({c: table.column(c) if c in table.column_names else pa.nulls(table.num_rows, pa.string()) for c in columns})


def _json_table(source: Source, block: bytes, columns: list[str]) -> tuple[pa.Table, np.ndarray]:
    """The JSON lines of ``block`` and their positions; when Arrow refuses the block (types
    that change between lines, a broken line), it is parsed line by line and broken lines
    go to ``source.malformed``."""
    start = source.rows
    try:
        table = pa_json.read_json(io.BytesIO(block), read_options=pa_json.ReadOptions(use_threads=False, block_size=len(block) + 1))
        source.rows += table.num_rows
        return table, np.arange(start, source.rows)
    except pa.ArrowInvalid:
        pass
    kept, positions, names = [], [], {}
    for line in block.split(b"\n"):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            if not isinstance(value, dict):
                raise ValueError(f"a JSON {type(value).__name__}, not an object")
            names.update(dict.fromkeys(value))
            kept.append(value)
            positions.append(source.rows)
        except ValueError as error:
            source.malformed.append((source.rows, f"malformed JSON line: {str(error)[:100]}: {line[:200]!r}"))
        source.rows += 1
    table = pa.table({name: pa.array([_json_text(r.get(name)) for r in kept], pa.string()) for name in names if name in columns})
    table = table if names else pa.table({c: pa.array([], pa.string()) for c in columns})
    return _with_names(table, list(names)), np.array(positions, dtype=np.int64)


def _with_names(table: pa.Table, names: list[str]) -> pa.Table:
    """``table`` whose column_names also list the keys found but not kept (for the missing-column message)."""
    for name in names:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    return table


def _json_text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


# --------------------------------------------------------------------------- validation
def _as_text(values: pa.Array) -> pa.Array:
    """Any Arrow column as strings, nulls as ''."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    kind = values.type
    if pa.types.is_dictionary(kind):
        values, kind = values.dictionary_decode(), values.type.value_type
    if pa.types.is_null(kind):
        return pa.array([""] * len(values), pa.string())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
            or pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return pc.fill_null(values.cast(pa.string()), "")
    return pa.array([_json_text(v) or "" for v in values.to_pylist()], pa.string())


def clean_text(values: pa.Array) -> pa.Array:
    """Whitespace runs collapsed to one space, trimmed; 'nan'/'none'/'null' (any case) become ''."""
    text = _as_text(values)
    # The Unicode-aware replace costs ~1.3 us a row; a match finds the few rows that need it ~10x faster.
    messy = pc.match_substring_regex(text, MESSY_WHITESPACE)
    if pc.any(messy).as_py():
        cleaned = pc.utf8_trim(pc.replace_substring_regex(text.filter(messy), WHITESPACE, " "), " ")
        text = pc.replace_with_mask(text, messy, cleaned)
    # ASCII lowering is enough: no other character lowers to the letters of these words.
    return pc.if_else(pc.is_in(pc.ascii_lower(text), value_set=NULL_WORDS), "", text)


def _clean_text(values: pd.Series) -> pd.Series:
    """:func:`clean_text` for a pandas Series (index.py builds product texts the same way)."""
    return pd.Series(clean_text(pa.array(values.astype(object).where(values.notna(), None).map(
        lambda v: v if v is None or isinstance(v, str) else str(v)), pa.string())).to_pylist(), index=values.index, dtype=object)


def product_text(parts: list[pa.Array]) -> pa.Array:
    """Cleaned text columns joined with ``TEXT_SEPARATOR``, empty parts left out."""
    text, *rest = [clean_text(part) for part in parts]
    # Pairwise on non-null strings: with null_handling="skip", pyarrow 26 drops rows whose parts are all null.
    for part in rest:
        joined = pc.binary_join_element_wise(text, part, TEXT_SEPARATOR)
        text = pc.if_else(pc.equal(text, ""), part, pc.if_else(pc.equal(part, ""), text, joined))
    return text


def parse_grade(values: pa.Array) -> pa.Array:
    """The label as float64; null where it is not a finite number."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_boolean(values.type):
        grade = values.cast(pa.float64())
    else:
        text = pc.utf8_trim_whitespace(_as_text(values))
        grade = pc.if_else(pc.match_substring_regex(text, NUMBER), text, pa.scalar(None, pa.string())).cast(pa.float64())
    return pc.if_else(pc.is_finite(grade), grade, pa.scalar(None, pa.float64()))


def query_group(query: str) -> str:
    """Split key: a digest of the normalised query, stable across runs and machines."""
    normalised = " ".join(query.lower().split())
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:16]


def group_position(group: str) -> float:
    """Where a query digest falls in [0, 1): decides its split and its spill partition."""
    return int(group[:12], 16) / float(16**12)


def query_groups(queries: list[str]) -> tuple[pa.Array, np.ndarray]:
    """:func:`query_group` and :func:`group_position` of many cleaned queries at once.

    A cleaned query has single spaces and no others, so normalising it is lowering it.
    """
    sha256 = hashlib.sha256
    digests = b"".join([sha256(q.lower().encode("utf-8")).digest()[:8] for q in queries])
    hex_text = pa.py_buffer(binascii.hexlify(digests))
    offsets = pa.py_buffer(np.arange(0, 16 * len(queries) + 1, 16, dtype=np.int32).tobytes())
    groups = pa.StringArray.from_buffers(len(queries), offsets, hex_text)
    top48 = np.frombuffer(digests, dtype=">u8") >> np.uint64(16)
    return groups, top48.astype(np.float64) / float(16**12)


@dataclasses.dataclass
class Validated:
    clean: pa.Table  # canonical columns plus ``split`` (int8 index into SPLITS) and ``position``
    rejected: np.ndarray  # row indices of the batch
    reasons: list[str]


def validate(raw: pa.Table, params: IngestParams, fractions: SplitFractions = SplitFractions()) -> Validated:
    """Split a batch of raw rows into canonical clean rows and rejected rows with a reason each."""
    query = clean_text(raw.column(params.query_column))
    text = product_text([raw.column(c) for c in params.text_column_list])
    grade = parse_grade(raw.column(params.label_column))
    grade_np = grade.to_numpy(zero_copy_only=False)  # NaN where null
    checks = [(pc.equal(query, "").to_numpy(zero_copy_only=False), lambda i: "missing or empty query"),
              (pc.equal(text, "").to_numpy(zero_copy_only=False),
               lambda i: f"missing or empty product text ({', '.join(params.text_column_list)})"),
              (np.isnan(grade_np), lambda i: f"label {label_text[i][:40]!r} is not a number")]
    if params.binary_labels:
        checks.append((~np.isin(grade_np, [0.0, 1.0]), lambda i: f"label {grade_np[i]} is not 0 or 1 (binary labels)"))
        label, target = grade_np, grade_np
    else:
        checks.append(((grade_np < params.label_min) | (grade_np > params.label_max),
                       lambda i: f"label {grade_np[i]} outside [{params.label_min:g}, {params.label_max:g}]"))
        label = grade_np >= params.positive_threshold
        target = (grade_np - params.label_min) / (params.label_max - params.label_min)
    bad = np.zeros(raw.num_rows, dtype=bool)
    reasons = np.full(raw.num_rows, None, dtype=object)
    label_text = None
    for mask, why in checks:
        new = np.nonzero(mask & ~bad)[0]
        if len(new):
            if label_text is None:
                label_text = _as_text(raw.column(params.label_column)).to_pylist()
            reasons[new] = [why(i) for i in new]
            bad[new] = True
    good = np.nonzero(~bad)[0]
    query = query.take(good)
    encoded = pc.dictionary_encode(query)
    groups, positions = query_groups(encoded.dictionary.to_pylist())
    position = positions[encoded.indices.to_numpy()] if len(good) else np.empty(0)
    split = np.select([position < fractions.train, position < fractions.train + fractions.validation], [0, 1], 2).astype(np.int8)
    clean = pa.table({
        "query": query, "product_text": text.take(good), "label": pa.array(label[good].astype(np.int8)),
        "grade": pa.array(grade_np[good]), "target": pa.array(np.clip(target[good], 0, 1).astype(np.float32)),
        "query_group": groups.take(encoded.indices),
        "split": pa.array(split), "position": pa.array(position)})
    rejected = np.nonzero(bad)[0]
    return Validated(clean, rejected, reasons[rejected].tolist())


def reason_kind(reason: str) -> str:
    """A reject reason without the value in it ('label is not a number'), for the counts."""
    if reason.startswith("malformed "):
        return reason.split(":", 1)[0]
    return re.sub(r"label .* (is not|outside)", r"label \1", reason)


# --------------------------------------------------------------------------- the two passes
REJECT_EXAMPLES = 3


class Rejects:
    """Rejected rows streamed to a Parquet file (the mapped columns as text, file, row position, reason)."""

    def __init__(self, path: str, columns: list[str]):
        self.path, self.columns = path, columns
        self.schema = pa.schema([*((c, pa.string()) for c in columns), ("source", pa.string()), ("source_row", pa.int64()),
                                 ("reason", pa.string())])
        self.partial = f"{path}.partial"
        self.writer = pq.ParquetWriter(self.partial, self.schema)
        self.count, self.by_kind, self.examples = 0, {}, []

    def add(self, source: str, raw: pa.Table | None, rows: np.ndarray, positions: np.ndarray, reasons: list[str]) -> None:
        if not len(reasons):
            return
        values = {c: _as_text(raw.column(c)).take(pa.array(rows)) if raw is not None else pa.array([""] * len(reasons))
                  for c in self.columns}
        self.writer.write_table(pa.table({**values, "source": pa.array([source] * len(reasons), pa.string()),
                                          "source_row": pa.array(positions, pa.int64()), "reason": pa.array(reasons, pa.string())},
                                         schema=self.schema))
        self.count += len(reasons)
        for reason in reasons:
            kind = reason_kind(reason)
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        self.examples += [f"{source}:{int(p)}: {r}" for p, r in zip(positions[:REJECT_EXAMPLES], reasons[:REJECT_EXAMPLES], strict=True)]
        del self.examples[REJECT_EXAMPLES:]

    def publish(self) -> None:
        self.writer.close()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        self.writer.close()
        if os.path.exists(self.partial):
            os.remove(self.partial)


class Spill:
    """Clean rows in ``partitions`` files by range of query digest (Arrow IPC streams, lz4), on local disk."""

    def __init__(self, folder: str, partitions: int):
        self.folder, self.partitions, self.writers = folder, partitions, {}
        self.options = pa.ipc.IpcWriteOptions(compression="lz4")
        self.buffered: list[pa.Table] = []
        self.buffered_rows = 0

    def add(self, clean: pa.Table) -> None:
        # Batches are gathered first: cut into ~100 partitions at once, a 14k-row batch would make
        # writes of ~140 rows, whose per-write cost grows with the number of partitions.
        self.buffered.append(clean)
        self.buffered_rows += clean.num_rows
        if self.buffered_rows >= SPILL_BUFFER_ROWS:
            self._flush()

    def _flush(self) -> None:
        clean = pa.concat_tables(self.buffered).combine_chunks()
        self.buffered, self.buffered_rows = [], 0
        if not clean.num_rows:
            return
        partition = np.minimum((clean.column("position").to_numpy() * self.partitions).astype(np.int64), self.partitions - 1)
        order = np.argsort(partition, kind="stable")
        clean, partition = clean.drop_columns(["position"]).take(order), partition[order]
        bounds = np.searchsorted(partition, np.arange(self.partitions + 1))
        for p in np.unique(partition):
            if p not in self.writers:
                self.writers[p] = pa.ipc.new_stream(os.path.join(self.folder, f"{p:05d}.arrows"), clean.schema, options=self.options)
            self.writers[p].write_table(clean.slice(bounds[p], bounds[p + 1] - bounds[p]))

    def tables(self) -> Iterator[pa.Table]:
        """Each partition's rows in digest order of the partitions (one partition in memory at a time)."""
        self._flush()
        for writer in self.writers.values():
            writer.close()
        for p in sorted(self.writers):
            path = os.path.join(self.folder, f"{p:05d}.arrows")
            with pa.memory_map(path) as source:
                table = pa.ipc.open_stream(source).read_all().combine_chunks()
            os.remove(path)
            yield table


def partitions_for(sources: list[str]) -> int:
    """Spill partitions for these inputs: about one per ``PARTITION_INPUT_BYTES`` of (uncompressed) input."""
    total = 0
    for source in sources:
        kind, compressed = file_kind(source)
        size = storage.stat(source)[0]
        total += size * (COMPRESSED_EXPANSION if compressed or kind == "parquet" else 1)
    return int(min(MAX_PARTITIONS, max(1, math.ceil(total / PARTITION_INPUT_BYTES))))


class Fingerprint:
    """Digest of the clean rows in (query digest, query, text, grade) order: the same rows hash the
    same whatever files or order they came in. Each of the five streams is the concatenation over all
    rows, so how the rows were cut into partitions does not matter."""

    def __init__(self):
        self.streams = [hashlib.sha256() for _ in range(5)]

    def add(self, table: pa.Table) -> None:
        for i, name in enumerate(("query", "product_text")):
            column = table.column(name).combine_chunks()
            _, offsets, data = column.buffers()
            offsets = np.frombuffer(offsets, dtype=np.int32)[column.offset : column.offset + len(column) + 1]
            self.streams[2 * i].update(np.diff(offsets).astype("<i4").tobytes())
            if data is not None:
                self.streams[2 * i + 1].update(memoryview(data)[offsets[0] : offsets[-1]])
        self.streams[4].update(table.column("grade").to_numpy().astype("<f8").tobytes())

    def hexdigest(self) -> str:
        return hashlib.sha256(b"".join(s.digest() for s in self.streams)).hexdigest()


def deduplicate(table: pa.Table) -> pa.Table:
    """Rows sorted by (query digest, query, text, grade) with exact duplicates dropped (first kept)."""
    keys = [("query_group", "ascending"), ("query", "ascending"), ("product_text", "ascending"), ("grade", "ascending")]
    table = table.take(pc.sort_indices(table, sort_keys=keys))  # stable: the first occurrence comes first
    if table.num_rows < 2:
        return table
    same = np.ones(table.num_rows - 1, dtype=bool)
    for name in ("query", "product_text", "grade"):
        column = table.column(name)
        same &= pc.equal(column.slice(1), column.slice(0, table.num_rows - 1)).to_numpy(zero_copy_only=False)
    return table.filter(pa.array(np.concatenate([[True], ~same])))


class SplitWriter:
    """One split's Parquet file, written in row groups of ``ROW_GROUP_ROWS``, with its running stats."""

    def __init__(self, path: str):
        self.path, self.partial = path, f"{path}.partial"
        self.writer = pq.ParquetWriter(self.partial, CANONICAL_SCHEMA)
        self.buffered: list[pa.Table] = []
        self.rows = self.queries = self.positives = 0

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        groups = table.column("query_group")
        self.queries += 1 + int(pc.sum(pc.not_equal(groups.slice(1), groups.slice(0, table.num_rows - 1))).as_py() or 0)
        self.rows += table.num_rows
        self.positives += int(pc.sum(table.column("label")).as_py() or 0)
        self.buffered.append(table)
        if sum(t.num_rows for t in self.buffered) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.buffered:
            self.writer.write_table(pa.concat_tables(self.buffered), row_group_size=ROW_GROUP_ROWS)
            self.buffered = []

    def stats(self) -> records.SplitStats:
        return records.SplitStats(rows=self.rows, queries=self.queries,
                                  positive_rate=round(self.positives / self.rows, 4) if self.rows else math.nan)

    def close(self) -> None:
        self._flush()
        self.writer.close()

    def publish(self) -> None:
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        self.writer.close()
        if os.path.exists(self.partial):
            os.remove(self.partial)


def ingest(
    output_dir: str,
    params: IngestParams,
    fractions: SplitFractions = SplitFractions(),
    rejects_path: str | None = None,
) -> records.IngestStats:
    """Run the ingest step.

    Args:
        output_dir: local directory that receives the splits and ``stats.json``.
        params: where the data is (``params.data``; empty = the bundled sample), which
            columns hold query, product text and label, and the text encoding.
        fractions: query shares of the train and validation splits.
        rejects_path: where to write the rejected rows (default ``output_dir/rejects.parquet``).

    Returns:
        The stats, also written to ``stats.json``.

    Raises:
        SearchtuneError: unreadable or empty input, a missing column, text that is not
            in the expected encoding, too many rejects, or a split left without both classes.
    """
    sources = storage.expand(params.data or sample_data.default_sample_path())
    for source in sources:
        file_kind(source)  # every file type checked before any work
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rejects_path = rejects_path or str(out / records.REJECTS_FILE)
    Path(rejects_path).parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys([params.query_column, *params.text_column_list, params.label_column]))
    rejects = Rejects(rejects_path, columns)
    writers = {split: SplitWriter(str(out / records.split_file(split))) for split in SPLITS}
    try:
        with tempfile.TemporaryDirectory(prefix="searchtune-ingest-") as spill_dir:
            spill = Spill(spill_dir, partitions_for(sources))
            started = time.perf_counter()
            read = [_read_source(source, columns, params, fractions, spill, rejects) for source in sources]
            rows_read = sum(s.rows for s in read)
            log.info("pass 1 (read, validate, spill to %d partitions): %d rows in %.1f s", spill.partitions, rows_read,
                     time.perf_counter() - started)
            _check_rejects(rejects, rows_read, params)
            started = time.perf_counter()
            kept, fingerprint = 0, Fingerprint()
            for table in spill.tables():
                table = deduplicate(table)
                kept += table.num_rows
                fingerprint.add(table)
                split = table.column("split").to_numpy()
                for code, name in enumerate(SPLITS):
                    writers[name].add(table.filter(pa.array(split == code)).drop_columns(["split"]))
            log.info("pass 2 (deduplicate, write the splits): %d rows in %.1f s", kept, time.perf_counter() - started)
        for writer in writers.values():
            writer.close()
        split_stats = {name: writer.stats() for name, writer in writers.items()}
        for name, writer in writers.items():
            if writer.positives in (0, writer.rows):
                raise SearchtuneError(
                    f"the {name} split has {writer.rows} rows and {min(writer.rows, 1)} label class(es); "
                    "need both positives and negatives (more data, or check --positive-threshold)")
    except BaseException:
        for writer in writers.values():
            writer.discard()
        rejects.discard()
        raise
    for writer in writers.values():
        writer.publish()
    fallback_lines = sum(s.fallback_lines for s in read)
    stats = records.IngestStats(
        fingerprint=fingerprint.hexdigest(),
        sources=sources,
        column_mapping=params.model_dump(exclude={"data", "max_reject_ratio"}),
        split_fractions=dataclasses.asdict(fractions),
        rows_read=rows_read,
        rows_rejected=rejects.count,
        rejects_by_reason=dict(sorted(rejects.by_kind.items(), key=lambda kv: -kv[1])),
        duplicates_dropped=rows_read - rejects.count - kept,
        rows_kept=kept,
        splits=split_stats,
        encodings={s.path: s.encoding for s in read},
        lines_decoded_with_fallback=fallback_lines,
    )
    stats.write(output_dir)
    log.info("kept %d rows (%d exact duplicates dropped); %s; data fingerprint %s", kept, stats.duplicates_dropped,
             ", ".join(f"{name} {stat.rows} rows / {stat.queries} queries" for name, stat in split_stats.items()), stats.fingerprint)
    if fallback_lines:
        log.warning("%d line(s) were not UTF-8 and were decoded as %s", fallback_lines, params.encoding)
    return stats


def _read_source(source_path: str, columns: list[str], params: IngestParams, fractions: SplitFractions, spill: Spill,
                 rejects: Rejects) -> Source:
    """Pass 1 over one file: validate each batch, spill the clean rows, stream out the rejects."""
    kind, compressed = file_kind(source_path)
    source = Source(source_path, kind, compressed)
    with storage.local_copy(source_path) as local:
        for raw, positions in read_batches(source, local, columns, params):
            checked = validate(raw, params, fractions)
            spill.add(checked.clean)
            rejects.add(source_path, raw, checked.rejected, positions[checked.rejected], checked.reasons)
            _flush_malformed(source, rejects)
        _flush_malformed(source, rejects)
    log.info("read %d rows from %s (%s)", source.rows, source_path, source.encoding)
    return source


def _flush_malformed(source: Source, rejects: Rejects) -> None:
    if source.malformed:
        positions, reasons = zip(*source.malformed, strict=True)
        rejects.add(source.path, None, np.arange(len(reasons)), np.array(positions), list(reasons))
        source.malformed.clear()


def _check_rejects(rejects: Rejects, rows_read: int, params: IngestParams) -> None:
    """Publish the rejects; stop when their share is above ``max_reject_ratio``."""
    rejects.publish()
    ratio = rejects.count / max(rows_read, 1)
    log.info("validated %d rows: %d rejected (%.2f%%)", rows_read, rejects.count, 100 * ratio)
    for kind, count in sorted(rejects.by_kind.items(), key=lambda kv: -kv[1])[:5]:
        log.info("  rejected %d: %s", count, kind)
    if ratio > params.max_reject_ratio:
        raise SearchtuneError(
            f"{rejects.count} of {rows_read} rows ({ratio:.1%}) were rejected, above max_reject_ratio "
            f"{params.max_reject_ratio:.1%}; e.g. {'; '.join(rejects.examples)}; all rejected rows are in {rejects.path}")


# --------------------------------------------------------------------------- reading the splits
def split_path(splits_dir: str, split: str) -> str:
    """The file of one split written by :func:`ingest`."""
    return str(Path(splits_dir) / records.split_file(split))


def read_split(splits_dir: str, split: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Load one split written by :func:`ingest` (whole: for the test and validation splits)."""
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
