"""Score (query, product text) pairs with a model: tokenize, batch, predict.

The one scoring path of evaluation and serving, so both give the same scores.
"""

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from searchtune.ml import batching, modeling
from searchtune.ml.tokens import encode_pairs


def score_frame(model, tokenizer, architecture: str, max_length: int, frame: pd.DataFrame) -> np.ndarray:
    """Logits of a model for every (query, product_text) row of ``frame``."""
    columns, _ = encode_pairs(tokenizer, architecture, frame["query"].tolist(), frame["product_text"].tolist(), max_length)
    split = batching.TokenizedSplit(columns, frame["label"].to_numpy())
    return batching.predict_logits(model, split, tokenizer.pad_token_id or 0, batching.pick_device())


def score_untuned_base(base_model: str, max_length: int, test: pd.DataFrame, validation: pd.DataFrame) -> np.ndarray:
    """The untuned base model as a bi-encoder: cosine of mean-pooled embeddings.

    Cosine is not a probability, so a one-feature logistic fit on the validation split
    (Platt scaling) maps it to a logit; AUC and nDCG do not depend on that map.
    """
    from transformers import AutoModel

    model = modeling.BiEncoder(AutoModel.from_pretrained(base_model), scale=1.0, bias=0.0).to(batching.pick_device())
    tokenizer = modeling.load_tokenizer(base_model)
    test_cos = score_frame(model, tokenizer, "bi-encoder", max_length, test)
    val_cos = score_frame(model, tokenizer, "bi-encoder", max_length, validation)
    platt = LogisticRegression().fit(val_cos.reshape(-1, 1), validation["label"].to_numpy())
    return platt.decision_function(test_cos.reshape(-1, 1))
