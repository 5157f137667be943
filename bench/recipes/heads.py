"""Bi-encoder heads the recipe screen tried beside the product's ``scale * cos + bias``.

Recipe research, not the product: ``logit = scale * cos(q, p) + bias``, plus

* a lexical term (the "hybrid head"), ``+ lexical_weight * lexical(q, p)``, with a per-pair
  lexical score such as ``ml.lexical.tfidf_cosine``; the product side stays precomputable
  (its vector and its TF-IDF vector). On the screen it cost validation AUC: hybrid_pairwise
  query-grouped 0.589 and pooled 0.690 against pairwise's 0.593 and 0.711
  (``bench/results/recipes_screen.json``), so the product's head has no lexical term;
* a query prior, ``+ w . q``: a per-query bias that ranks queries against each other and
  never the rows of one query (it can change the pooled AUC only).

A model with a lexical term saves ``lexical_weight`` in its head file; the product refuses
to load such a head (``ml.modeling.load_trained_model``) rather than score without it.
"""

from __future__ import annotations

import torch
from torch import nn

from searchtune.errors import SearchtuneError
from searchtune.ml import modeling
from searchtune.params import TrainParams


class ResearchBiEncoder(modeling.BiEncoder):
    """The product's bi-encoder with an optional lexical term and query prior in its head.

    Args:
        encoder: the (LoRA-wrapped) encoder.
        lexical_weight: the lexical term's starting weight; ``None`` = no lexical term.
        query_prior: add the query prior ``w . q`` (``w`` starts at 0).
    """

    def __init__(self, encoder: nn.Module, scale: float = 10.0, bias: float = -5.0, lexical_weight: float | None = None,
                 query_prior: bool = False):
        super().__init__(encoder, scale, bias)
        self.lexical_weight = None if lexical_weight is None else nn.Parameter(torch.tensor(float(lexical_weight)))
        self.query_prior = None
        if query_prior:
            self.query_prior = nn.Linear(encoder.config.hidden_size, 1, bias=False)
            nn.init.zeros_(self.query_prior.weight)
        # The head's parameters train at head_learning_rate without decay (steps.finetune.build_optimizer).
        self.HEAD = (*modeling.BiEncoder.HEAD, *(("lexical_weight",) if lexical_weight is not None else ()),
                     *(("query_prior.weight",) if query_prior else ()))

    def pair_logits(self, cosine: torch.Tensor, lexical: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from each pair's cosine and, for a lexical term, its lexical score.

        Raises:
            SearchtuneError: a lexical term without lexical scores.
        """
        logits = super().pair_logits(cosine)
        if self.lexical_weight is not None:
            if lexical is None:
                raise SearchtuneError("this model's head takes a lexical match score per pair: pass batch['lexical']")
            logits = logits + self.lexical_weight * lexical.to(logits.dtype)
        return logits

    def logits_of_vectors(self, query_vectors: torch.Tensor, text_vectors: torch.Tensor, query_index: torch.Tensor,
                          text_index: torch.Tensor, lexical: torch.Tensor | None = None) -> torch.Tensor:
        """Row logits from the batch's distinct unit vectors and each row's index into them."""
        logits = self.pair_logits((query_vectors[query_index] * text_vectors[text_index]).sum(-1), lexical)
        if self.query_prior is not None:
            logits = logits + self.query_prior(query_vectors).squeeze(-1)[query_index]
        return logits

    def forward(self, batch: dict) -> torch.Tensor:
        query = self.embed(batch["query_ids"], batch["query_mask"])
        text = self.embed(batch["text_ids"], batch["text_mask"])
        rows = torch.arange(len(query), device=query.device)
        return self.logits_of_vectors(query, text, rows, rows, batch.get("lexical"))

    def head_state(self) -> dict:
        """The scalar head values, as the product saves its head (the query prior is a vector: not saved)."""
        return {name: getattr(self, name).detach().float().cpu().reshape(1) for name in self.HEAD if "." not in name}

    def head_state_floats(self) -> dict[str, float]:
        """The scalar head values as plain floats (for the results files)."""
        return {name: round(float(value.item()), 5) for name, value in self.head_state().items()}


def build(params: TrainParams, base_model: str, *, lexical_weight: float | None = None, query_prior: bool = False,
          init_from: str = "") -> ResearchBiEncoder:
    """The product's LoRA bi-encoder (``ml.modeling.build_model``) under a research head.

    Args:
        params: architecture and LoRA settings (a bi-encoder).
        base_model: a loadable name or path.
        lexical_weight, query_prior: see :class:`ResearchBiEncoder`.
        init_from: a model directory saved by ``ml.modeling.save_model`` to continue from; its
            head must have the same parameters (``ml.modeling.warm_start`` checks).
    """
    if params.architecture != "bi-encoder":
        raise SearchtuneError("the research heads are bi-encoder heads")
    plain = modeling.build_model(params, base_model)
    model = ResearchBiEncoder(plain.encoder, lexical_weight=lexical_weight, query_prior=query_prior)
    if init_from:
        modeling.warm_start(model, params, base_model, init_from)
    return model
