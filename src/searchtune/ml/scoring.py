"""Score (query, product text) pairs with a model: tokenize, batch, predict, in chunks.

The one scoring path of evaluation and serving, so both give the same scores. Rows are
encoded and scored ``CHUNK_ROWS`` at a time, so scoring millions of test rows holds one
chunk's token ids, never the whole frame's.
"""

import numpy as np
import pandas as pd

from searchtune.ml import batching
from searchtune.ml.tokens import encode_arrays
from searchtune.progress import track

CHUNK_ROWS = 16384


def score_frame(model, tokenizer, architecture: str, max_length: int, frame: pd.DataFrame) -> np.ndarray:
    """Logits of a model for every (query, product_text) row of ``frame``.

    Args:
        model: a relevance model (``ml.modeling``).
        tokenizer: its tokenizer.
        architecture: ``bi-encoder`` or ``cross-encoder``.
        max_length: truncation length of each encoded text.
        frame: rows with ``query`` and ``product_text``.

    Returns:
        A float32 array, one logit per row, in the frame's order.
    """
    device = batching.pick_device()
    pad_id = tokenizer.pad_token_id or 0
    out = np.empty(len(frame), dtype=np.float32)
    starts = range(0, len(frame), CHUNK_ROWS)
    for start in track(starts, total=len(frame), what="score", unit="rows", scale=CHUNK_ROWS):
        part = frame.iloc[start : start + CHUNK_ROWS]
        columns, _ = encode_arrays(tokenizer, architecture, part["query"].tolist(), part["product_text"].tolist(), max_length)
        out[start : start + len(part)] = batching.predict_logits(model, batching.TokenizedSplit.from_columns(columns), pad_id, device)
    return out
