"""Tokenize step: the model's fast tokenizer, batched, truncated, unpadded.

Padding happens per batch in the trainer (dynamic padding), so ids are stored unpadded
as Parquet list columns. For every split this writes ``<split>.parquet`` with
``query_ids`` and ``text_ids`` (bi-encoder: query and product encoded apart) or
``pair_ids`` and ``pair_type_ids`` (cross-encoder: the pair in one sequence), plus the
``label``; and ``tokenize_stats.json`` with length statistics and truncation rates.
"""

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from searchtune import records
from searchtune.ml import modeling
from searchtune.ml.tokens import encode_pairs
from searchtune.params import ModelParams
from searchtune.steps import ingest

log = logging.getLogger(__name__)

ID_TYPES = {"query_ids": pa.int32(), "text_ids": pa.int32(), "pair_ids": pa.int32(), "pair_type_ids": pa.int8()}


def length_stats(lengths: np.ndarray, max_length: int) -> dict:
    return {
        "mean": round(float(lengths.mean()), 2),
        "p50": int(np.percentile(lengths, 50)),
        "p95": int(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "truncated_rate": round(float((lengths > max_length).mean()), 4),
    }


def tokenize(splits_dir: str, output_dir: str, params: ModelParams) -> records.TokenizeStats:
    """Run the tokenize step.

    Args:
        splits_dir: output of the ingest step.
        output_dir: local directory for the tokenized splits, the tokenizer and stats.
        params: the base model (whose tokenizer is used), the architecture (how a pair is
            encoded) and the truncation length.

    Returns:
        The statistics, also written to ``tokenize_stats.json``.
    """
    tokenizer = modeling.load_tokenizer(modeling.resolve_base_model(params.base_model))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    split_records = {}
    for split in records.SPLITS:
        frame = ingest.read_split(splits_dir, split)
        columns, lengths = encode_pairs(tokenizer, params.architecture, frame["query"].tolist(), frame["product_text"].tolist(),
                                        params.max_length)
        table = pa.table({"label": pa.array(frame["label"].to_numpy(), pa.int8()),
                          "target": pa.array(frame["target"].to_numpy(), pa.float32()),
                          **{name: pa.array(ids, pa.list_(ID_TYPES[name])) for name, ids in columns.items()}})
        pq.write_table(table, out / records.split_file(split))
        split_stats = {field: length_stats(values, params.max_length) for field, values in lengths.items()}
        real_tokens = int(sum(np.minimum(values, params.max_length).sum() for values in lengths.values()))
        split_records[split] = {"rows": len(frame), "tokens": real_tokens, **split_stats}
        log.info("tokenized %s: %d rows, %d tokens, %s", split, len(frame), real_tokens, split_stats)
    stats = records.TokenizeStats(architecture=params.architecture, max_length=params.max_length,
                                  tokenizer=tokenizer.name_or_path, splits=split_records)
    stats.write(output_dir)
    tokenizer.save_pretrained(out / records.TOKENIZER_DIR)
    log.info("wrote tokenized splits and tokenizer to %s", out)
    return stats
