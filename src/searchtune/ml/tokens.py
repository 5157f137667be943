"""Token ids for (query, product) pairs, as each architecture consumes them."""

import numpy as np

BATCH_ROWS = 4096


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
