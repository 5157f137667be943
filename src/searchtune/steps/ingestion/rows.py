"""Validating rows for the ingest step: canonical columns, text cleaning, grades, the split key.

Every function works on Arrow arrays of one record batch (the split by query digest is
row-local), so validation streams with the read.
"""

from __future__ import annotations

import binascii
import dataclasses
import hashlib
import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.params import IngestParams

SPLITS = records.SPLITS
TEXT_SEPARATOR = " | "
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


DEFAULT_FRACTIONS = SplitFractions()  # 80/10/10 of the queries


# --------------------------------------------------------------------------- validation
def as_text(values: pa.Array) -> pa.Array:
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
    return pa.array([json_text(v) or "" for v in values.to_pylist()], pa.string())


def clean_text(values: pa.Array) -> pa.Array:
    """Whitespace runs collapsed to one space, trimmed; 'nan'/'none'/'null' (any case) become ''."""
    text = as_text(values)
    # The Unicode-aware replace costs ~1.3 us a row; a match finds the few rows that need it ~10x faster.
    messy = pc.match_substring_regex(text, MESSY_WHITESPACE)
    if pc.any(messy).as_py():
        cleaned = pc.utf8_trim(pc.replace_substring_regex(text.filter(messy), WHITESPACE, " "), " ")
        text = pc.replace_with_mask(text, messy, cleaned)
    # ASCII lowering is enough: no other character lowers to the letters of these words.
    return pc.if_else(pc.is_in(pc.ascii_lower(text), value_set=NULL_WORDS), "", text)


def text_array(values: pd.Series) -> pa.Array:
    """A pandas column as an Arrow string array (non-strings as ``str``, missing as null), for
    :func:`product_text` (the index step joins catalog columns the way ingest joins the data's)."""
    return pa.array(values.astype(object).where(values.notna(), None).map(
        lambda v: v if v is None or isinstance(v, str) else str(v)), pa.string())


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
        text = pc.utf8_trim_whitespace(as_text(values))
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


def validate(raw: pa.Table, params: IngestParams, fractions: SplitFractions = DEFAULT_FRACTIONS) -> Validated:
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
                label_text = as_text(raw.column(params.label_column)).to_pylist()
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


# --------------------------------------------------------------------------- column types
def column_roles(params: IngestParams) -> dict[str, str]:
    """Each mapped column and the role it plays, as messages name it."""
    roles = {params.query_column: "query"}
    for column in params.text_column_list:
        roles.setdefault(column, "text")
    roles.setdefault(params.label_column, "label")
    return roles


ROLE_FLAGS = {"query": "--query-column", "text": "--text-columns", "label": "--label-column"}
ROLE_EXPECTS = {"query": "text (or whole numbers)", "text": "text, numbers, dates or booleans", "label": "a number (or a number as text)"}


def type_problem(role: str, kind: pa.DataType) -> str | None:
    """What is wrong with a column of Arrow type ``kind`` in ``role`` (None: nothing): it must hold one
    scalar a row, of a kind that role can use (what :func:`as_text` and :func:`parse_grade` read)."""
    accepted = _accepts(role, kind.value_type if pa.types.is_dictionary(kind) else kind)
    if accepted:
        return None
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return f"a list per row ({kind})"
    if pa.types.is_struct(kind):
        return f"a record per row ({kind})"
    if pa.types.is_map(kind):
        return f"a map per row ({kind})"
    return f"values of type {kind}"


def _accepts(role: str, kind: pa.DataType) -> bool:
    text = (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind) or pa.types.is_null(kind))
    number = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind) or pa.types.is_boolean(kind)
    if role == "query":
        return text or pa.types.is_integer(kind)
    if role == "label":
        return text or number
    return text or number or pa.types.is_temporal(kind)


def reason_kind(reason: str) -> str:
    """A reject reason without the value in it ('label is not a number'), for the counts."""
    if reason.startswith("malformed "):
        return reason.split(":", 1)[0]
    return re.sub(r"label .* (is not|outside)", r"label \1", reason)


def json_text(value) -> str | None:
    """A JSON value as text: strings as they are, objects and lists as JSON, other scalars by ``str``."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, dict | list) else str(value)
