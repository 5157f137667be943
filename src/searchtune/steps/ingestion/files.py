"""Reading logs for the ingest step: formats, compression and text encodings, in record batches.

CSV/TSV, JSON Lines and Parquet; ``.gz`` decompressed on the fly. Text files pass through
:class:`TextStream`, which checks UTF-8 line by line and decodes a declared fallback
encoding, so characters are never replaced silently. :func:`read_batches` yields each
batch with the 0-based row position of every row in its file (what a reject names).

Columns are checked before any row is used: each mapped column present once, holding one value
a row of a kind its role can use (``ingest_rows.type_problem``: a Parquet or JSON list or record
is refused, not read as text); a CSV header that is one column names the delimiter it looks like.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from searchtune.errors import SearchtuneError, first_line
from searchtune.io.text_stream import TextStream
from searchtune.params import IngestParams
from searchtune.steps.ingestion.rows import ROLE_EXPECTS, ROLE_FLAGS, column_roles, json_text, type_problem

log = logging.getLogger(__name__)

READERS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
BLOCK_BYTES = 2 << 20  # text read and parsed per batch (the CSV reader keeps several in flight)
PARQUET_BATCH_ROWS = 65536
COMPRESSED_EXPANSION = 4



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
    near = f" near row {rows}" if rows else ""
    return SearchtuneError(f"{source.path}: cannot be read as {source.kind}{near}: {first_line(error)}")


def _check_columns(source: Source, found: list[str], columns: list[str]) -> None:
    missing = [column for column in columns if column not in found]
    if missing:
        raise SearchtuneError(f"{source.path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
                              f"columns found: {', '.join(repr(str(c)) for c in found)}")
    for column in columns:  # readers would take the first (CSV) or the last (JSON) without a word
        places = [i + 1 for i, name in enumerate(found) if name == column]
        if len(places) > 1:
            raise SearchtuneError(f"{source.path}: column {column!r} appears {len(places)} times (columns "
                                  f"{', '.join(map(str, places))}); rename all but one, so it is clear which is meant")


def _check_types(source: Source, types: dict[str, pa.DataType | str], params: IngestParams) -> None:
    """Refuse a mapped column whose values are not single values of the kind its role needs; read as
    text, a list or a record would become a string such as '["rheostat", "x"]' and be trained on."""
    for column, role in column_roles(params).items():
        kind = types.get(column)
        problem = kind if isinstance(kind, str) else type_problem(role, kind) if kind is not None else None
        if problem:
            raise SearchtuneError(f"{source.path}: the {role} column {column!r} holds {problem}, not {ROLE_EXPECTS[role]}; "
                                  f"map a column with one value a row ({ROLE_FLAGS[role]}), or flatten this one first")


def _open_text(source: Source, local: str, encoding: str) -> TextStream:
    raw = gzip.open(local, "rb") if source.compressed else open(local, "rb")  # noqa: SIM115 - closed by the reader
    return TextStream(raw, source.path, encoding, BLOCK_BYTES)


def read_batches(source: Source, local: str, columns: list[str], params: IngestParams) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """Record batches of the mapped ``columns`` of one file, with each row's 0-based position in it.

    Rows the parser cannot split (a CSV line with too many fields, a JSON line that is not
    JSON) are left out and added to ``source.malformed`` with their position.
    """
    if os.path.getsize(local) == 0:
        raise SearchtuneError(f"{source.path}: the file is empty")
    if source.kind == "parquet":
        yield from _parquet_batches(source, local, columns, params)
    elif source.kind == "csv":
        yield from _csv_batches(source, local, columns, params)
    else:
        yield from _json_batches(source, local, columns, params)
    if source.rows == 0:
        raise SearchtuneError(f"{source.path}: no rows")


def _parquet_batches(source: Source, local: str, columns: list[str], params: IngestParams):
    try:
        parquet = pq.ParquetFile(local)
    except (pa.ArrowException, OSError) as error:
        raise _cannot_read(source, error) from None
    schema = parquet.schema_arrow
    _check_columns(source, schema.names, columns)
    _check_types(source, {name: schema.field(name).type for name in columns}, params)
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
        _refuse_other_delimiter(source, _first_line(source, local, params.encoding), delimiter)
        raise _cannot_read(source, error) from None
    if len(found) == 1 and any(column not in found for column in columns):
        _refuse_other_delimiter(source, found[0], delimiter)
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


DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}


def _refuse_other_delimiter(source: Source, header: str, delimiter: str) -> None:
    """A header that is one column with this file's delimiter but splits with another: name that one
    (else the user meets "missing column 'q;title;...'" or "Expected 1 columns, got 2")."""
    if delimiter in header:
        return
    counts = {other: header.count(other) for other in DELIMITER_NAMES if other != delimiter}
    other = max(counts, key=counts.get)
    if not counts[other]:
        return
    remedy = {"\t": "name it .tsv", ",": "name it .csv"}.get(other, "export it comma-separated (.csv) or tab-separated "
                                                                 "(.tsv): the delimiters read")
    raise SearchtuneError(f"{source.path}: the header is one column when split by {DELIMITER_NAMES[delimiter]}s but looks "
                          f"{DELIMITER_NAMES[other]}-delimited ({header[:120]!r}); {remedy}")


def _first_line(source: Source, local: str, encoding: str) -> str:
    with _open_text(source, local, encoding) as stream:
        head = stream.read(1 << 16)
    return head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")


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
                table, positions = _json_table(source, block, columns, params)
                if first:
                    _check_columns(source, table.column_names, columns)
                    _check_json_keys(source, block, columns)
                    first = False
                _check_types(source, {name: table.schema.field(name).type for name in columns if name in table.column_names},
                             params)
                yield _with_nulls(table, columns), positions
            if not data:
                break
        source.encoding, source.fallback_lines = stream.used, stream.fallback_lines


def _check_json_keys(source: Source, block: bytes, columns: list[str]) -> None:
    """A mapped key twice in the first object (JSON allows it; readers keep one without a word). The first
    line stands for the file, as a CSV header does: checking every line would parse the file twice."""
    line = next((line for line in io.BytesIO(block) if line.strip()), b"")
    try:
        pairs = json.loads(line, object_pairs_hook=lambda pairs: pairs)
    except ValueError:
        return  # a broken first line is a malformed row, reported as such
    if isinstance(pairs, list) and all(isinstance(pair, tuple) for pair in pairs):
        _check_columns(source, [key for key, _ in pairs], [c for c in columns if c in dict(pairs)])


def _with_nulls(table: pa.Table, columns: list[str]) -> pa.Table:
    return pa.table({c: table.column(c) if c in table.column_names else pa.nulls(table.num_rows, pa.string()) for c in columns})


def _json_table(source: Source, block: bytes, columns: list[str], params: IngestParams) -> tuple[pa.Table, np.ndarray]:
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
    for name in columns:
        nested = next((r[name] for r in kept if isinstance(r.get(name), dict | list)), None)
        if nested is not None:
            types = {name: f"a JSON {'object' if isinstance(nested, dict) else 'list'} in some rows ({json_text(nested)[:60]})"}
            _check_types(source, types, params)
    table = pa.table({name: pa.array([json_text(r.get(name)) for r in kept], pa.string()) for name in names if name in columns})
    table = table if names else pa.table({c: pa.array([], pa.string()) for c in columns})
    return _with_names(table, list(names)), np.array(positions, dtype=np.int64)


def _with_names(table: pa.Table, names: list[str]) -> pa.Table:
    """``table`` whose column_names also list the keys found but not kept (for the missing-column message)."""
    for name in names:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    return table
