"""Tokenize step: the model's fast tokenizer, batched, truncated, unpadded.

Padding happens per batch in the trainer (dynamic padding), so ids are stored unpadded
as Parquet list columns. For every split this writes ``<split>.parquet`` with
``query_ids`` and ``text_ids`` (bi-encoder: query and product encoded apart) or
``pair_ids`` and ``pair_type_ids`` (cross-encoder: the pair in one sequence), plus the
``label``; and ``tokenize_stats.json`` with length statistics and truncation rates.
"""

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from searchtune import ingest, modeling

log = logging.getLogger(__name__)

BATCH_ROWS = 4096
ID_TYPES = {"query_ids": pa.int32(), "text_ids": pa.int32(), "pair_ids": pa.int32(), "pair_type_ids": pa.int8()}


def _encode(tokenizer, texts: list[str], max_length: int, pairs: list[str] | None = None) -> tuple[list, list, np.ndarray]:
    """Encode in batches; return ids, token type ids and the untruncated lengths."""
    ids, type_ids, full_lengths = [], [], []
    for start in range(0, len(texts), BATCH_ROWS):
        batch = texts[start : start + BATCH_ROWS]
        second = pairs[start : start + BATCH_ROWS] if pairs is not None else None
        encoded = tokenizer(batch, second, truncation=False, return_token_type_ids=True)
        for seq, types in zip(encoded["input_ids"], encoded["token_type_ids"], strict=True):
            full_lengths.append(len(seq))
            if len(seq) > max_length:
                # Keep [CLS] ... and the final [SEP]; for pairs the product text is cut, not the query.
                seq, types = seq[: max_length - 1] + seq[-1:], types[: max_length - 1] + types[-1:]
            ids.append(seq)
            type_ids.append(types)
    return ids, type_ids, np.asarray(full_lengths)


def encode_pairs(tokenizer, architecture: str, queries: list[str], texts: list[str], max_length: int) -> tuple[dict, dict]:
    """Token ids for (query, product) pairs as the architecture consumes them.

    Returns:
        ``(columns, lengths)``: list-of-ids columns by name, and untruncated lengths per
        encoded field (for truncation statistics).
    """
    if architecture == "cross-encoder":
        pair_ids, pair_types, lengths = _encode(tokenizer, queries, max_length, texts)
        return {"pair_ids": pair_ids, "pair_type_ids": pair_types}, {"pair": lengths}
    query_ids, _, query_lengths = _encode(tokenizer, queries, max_length)
    text_ids, _, text_lengths = _encode(tokenizer, texts, max_length)
    return {"query_ids": query_ids, "text_ids": text_ids}, {"query": query_lengths, "text": text_lengths}


def length_stats(lengths: np.ndarray, max_length: int) -> dict:
    return {
        "mean": round(float(lengths.mean()), 2),
        "p50": int(np.percentile(lengths, 50)),
        "p95": int(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "truncated_rate": round(float((lengths > max_length).mean()), 4),
    }


def tokenize(splits_dir: str, output_dir: str, base_model: str, architecture: str = modeling.DEFAULT_ARCHITECTURE, max_length: int = 64) -> dict:
    """Run the tokenize step.

    Args:
        splits_dir: output of the ingest step.
        output_dir: local directory for the tokenized splits, the tokenizer and stats.
        base_model: Hugging Face model id or path whose tokenizer is used ('' = bundled MiniLM).
        architecture: ``bi-encoder`` or ``cross-encoder``; decides how pairs are encoded.
        max_length: truncation length in tokens.

    Returns:
        The statistics written to ``tokenize_stats.json``.
    """
    modeling.check_architecture(architecture)
    if max_length < 8:
        from searchtune.errors import SearchtuneError

        raise SearchtuneError(f"max_length {max_length} is too small; use at least 8 tokens")
    tokenizer = modeling.load_tokenizer(modeling.resolve_base_model(base_model))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = {"architecture": architecture, "max_length": max_length, "tokenizer": tokenizer.name_or_path, "splits": {}}
    for split in ingest.SPLITS:
        frame = ingest.read_split(splits_dir, split)
        columns, lengths = encode_pairs(tokenizer, architecture, frame["query"].tolist(), frame["product_text"].tolist(), max_length)
        table = pa.table({"label": pa.array(frame["label"].to_numpy(), pa.int8()),
                          "target": pa.array(frame["target"].to_numpy(), pa.float32()),
                          **{name: pa.array(ids, pa.list_(ID_TYPES[name])) for name, ids in columns.items()}})
        pq.write_table(table, out / f"{split}.parquet")
        split_stats = {field: length_stats(values, max_length) for field, values in lengths.items()}
        real_tokens = int(sum(np.minimum(values, max_length).sum() for values in lengths.values()))
        stats["splits"][split] = {"rows": len(frame), "tokens": real_tokens, **split_stats}
        log.info("tokenized %s: %d rows, %d tokens, %s", split, len(frame), real_tokens, split_stats)
    (out / "tokenize_stats.json").write_text(json.dumps(stats, indent=2))
    tokenizer.save_pretrained(out / "tokenizer")
    log.info("wrote tokenized splits and tokenizer to %s", out)
    return stats
