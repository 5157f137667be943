"""Token ids for (query, product) pairs, as each architecture consumes them, as Arrow arrays.

The tokenizer's Rust core encodes a batch on all cores; the ids come out of it once as
Python lists (the tokenizers API has no other way out) and go straight into one flat
``int32`` array with offsets: an Arrow ``list<int32>`` column, which the tokenize step
writes and the trainer memory-maps. Truncation is vectorised on the flat array.

Within a call every distinct text is encoded once: search logs repeat queries many
times, and products too.

Truncation keeps ``[CLS]`` ... and the final ``[SEP]``; for pairs the product text is cut,
not the query (the pair is cut from its end).
"""

from __future__ import annotations

import itertools
import weakref

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BATCH_ROWS = 8192  # texts per call into the Rust tokenizer
_BACKENDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def backend_tokenizer(tokenizer):
    """A copy of a transformers fast tokenizer's Rust tokenizer with padding and truncation off.

    Saved tokenizers often carry ``truncation``/``padding`` settings (the bundled model's:
    128 tokens); searchtune truncates itself and pads per batch. A copy, so the caller's
    tokenizer is left as it was; cached per tokenizer object.
    """
    backend = _BACKENDS.get(tokenizer)
    if backend is None:
        import tokenizers

        backend = _untruncated(tokenizers.Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()))
        _BACKENDS[tokenizer] = backend
    return backend


def backend_from_file(path: str):
    """The Rust tokenizer saved in ``tokenizer.json`` (by ``save_pretrained``), padding and truncation off."""
    import tokenizers

    return _untruncated(tokenizers.Tokenizer.from_file(path))


def _untruncated(backend):
    backend.no_truncation()
    backend.no_padding()
    return backend


def _flat(lists: list[list[int]], dtype) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, values)`` of a list of id lists."""
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, np.fromiter(itertools.chain.from_iterable(lists), dtype=dtype, count=int(offsets[-1]))


def truncate(offsets: np.ndarray, values: list[np.ndarray], max_length: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Cut every row longer than ``max_length`` to its first ``max_length - 1`` ids and its last one.

    Args:
        offsets: row boundaries into each of ``values`` (rows + 1 of them).
        values: flat arrays cut the same way (ids, and token type ids for pairs).
        max_length: the most ids a row keeps.

    Returns:
        The new offsets and values.
    """
    lengths = np.diff(offsets)
    if not len(lengths) or lengths.max() <= max_length:
        return offsets, values
    position = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], lengths)
    keep = (position < max_length - 1) | (position == np.repeat(lengths - 1, lengths))
    new_offsets = np.zeros_like(offsets)
    np.cumsum(np.minimum(lengths, max_length), out=new_offsets[1:])
    return new_offsets, [array[keep] for array in values]


def _encode(backend, inputs: list, max_length: int, with_types: bool) -> tuple[list[pa.ListArray], np.ndarray]:
    """Encode ``inputs`` (texts, or (query, text) tuples): truncated id columns and untruncated lengths."""
    columns, lengths = [[], []], []
    for start in range(0, len(inputs), BATCH_ROWS):
        encoded = backend.encode_batch_fast(inputs[start : start + BATCH_ROWS])
        offsets, ids = _flat([e.ids for e in encoded], np.int32)
        values = [ids, _flat([e.type_ids for e in encoded], np.int8)[1]] if with_types else [ids]
        lengths.append(np.diff(offsets))
        offsets, values = truncate(offsets, values, max_length)
        arrow_offsets = pa.array(offsets.astype(np.int32))
        for column, flat in zip(columns, values, strict=False):
            column.append(pa.ListArray.from_arrays(arrow_offsets, pa.array(flat)))
    types = (pa.int32(), pa.int8())
    out = [pa.concat_arrays(c) if c else pa.array([], pa.list_(t)) for c, t in zip(columns, types, strict=True)]
    return out[: 2 if with_types else 1], np.concatenate(lengths) if lengths else np.zeros(0, np.int64)


def encode_column(backend, texts: pa.Array, max_length: int) -> tuple[pa.ListArray, np.ndarray]:
    """Ids of each text (``[CLS] text [SEP]``), truncated, and its untruncated length; repeats encoded once."""
    encoded = pc.dictionary_encode(texts)
    (ids,), lengths = _encode(backend, encoded.dictionary.to_pylist(), max_length, with_types=False)
    indices = encoded.indices
    return ids.take(indices), lengths[indices.to_numpy()]


def encode_pair_column(backend, queries: pa.Array, texts: pa.Array, max_length: int) -> tuple[pa.ListArray, pa.ListArray, np.ndarray]:
    """Ids and token type ids of ``[CLS] query [SEP] text [SEP]``, truncated, and the untruncated lengths."""
    (ids, types), lengths = _encode(backend, list(zip(queries.to_pylist(), texts.to_pylist(), strict=True)), max_length,
                                    with_types=True)
    return ids, types, lengths


def encode_arrays(tokenizer, architecture: str, queries, texts, max_length: int) -> tuple[dict[str, pa.ListArray], dict[str, np.ndarray]]:
    """Token id columns of (query, product) pairs as the architecture consumes them.

    Args:
        tokenizer: a transformers fast tokenizer.
        architecture: ``bi-encoder`` (query and text encoded apart) or ``cross-encoder`` (the pair in one sequence).
        queries: the queries (a list of strings or an Arrow string array).
        texts: the product texts, as many.
        max_length: the most ids a sequence keeps.

    Returns:
        ``(columns, lengths)``: ``list<int32>`` columns by name (``query_ids``/``text_ids`` or
        ``pair_ids``/``pair_type_ids``, the latter ``list<int8>``), and the untruncated
        lengths per encoded field (for truncation statistics).
    """
    backend = backend_tokenizer(tokenizer)
    queries, texts = pa.array(queries, pa.string()), pa.array(texts, pa.string())
    if architecture == "cross-encoder":
        pair_ids, pair_types, lengths = encode_pair_column(backend, queries, texts, max_length)
        return {"pair_ids": pair_ids, "pair_type_ids": pair_types}, {"pair": lengths}
    query_ids, query_lengths = encode_column(backend, queries, max_length)
    text_ids, text_lengths = encode_column(backend, texts, max_length)
    return {"query_ids": query_ids, "text_ids": text_ids}, {"query": query_lengths, "text": text_lengths}


def encode_pairs(tokenizer, architecture: str, queries: list[str], texts: list[str], max_length: int) -> tuple[dict, dict]:
    """:func:`encode_arrays` with the columns as Python lists of ids (for small inputs: serving, tests).

    Returns:
        ``(columns, lengths)``: list-of-ids columns by name, and untruncated lengths per
        encoded field.
    """
    columns, lengths = encode_arrays(tokenizer, architecture, queries, texts, max_length)
    return {name: column.to_pylist() for name, column in columns.items()}, lengths
