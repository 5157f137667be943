"""Score (query, product text) pairs with a model: tokenize, batch, predict.

The one scoring path of evaluation and serving, so both give the same scores.
"""

import numpy as np
import pandas as pd

from searchtune.ml import batching
from searchtune.ml.tokens import encode_pairs


def score_frame(model, tokenizer, architecture: str, max_length: int, frame: pd.DataFrame) -> np.ndarray:
    """Logits of a model for every (query, product_text) row of ``frame``."""
    columns, _ = encode_pairs(tokenizer, architecture, frame["query"].tolist(), frame["product_text"].tolist(), max_length)
    split = batching.TokenizedSplit(columns, frame["label"].to_numpy())
    return batching.predict_logits(model, split, tokenizer.pad_token_id or 0, batching.pick_device())
