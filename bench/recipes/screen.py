"""Screen 3: training recipes on a quarter of the training queries, one epoch, judged on validation.

Each named recipe below trains the LoRA bi-encoder with the compact loop of
``harness.py`` on the same seeded 25% of the training queries (~14.8k rows), one epoch,
and is scored on the whole validation split twice (half-way and at the end; the better
query-grouped AUC is kept). Results are merged by name into
``bench/results/recipes_screen.json``, so recipes can be run one at a time:

    OMP_NUM_THREADS=1 .venv/bin/python bench/recipes/screen.py bce_random bce_query pairwise ...

What each recipe changes against ``bce_random`` (today's objective and row sampling):
see ``RECIPES``.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from common import CACHE, RESULTS, splits, write_result
from harness import Recipe, recipe_params, result_record, subsample_queries, train
from losses import LossWeights

SHARE = 0.25


def _recipe(name: str, train: dict | None = None, **settings) -> Recipe:
    """A screened recipe: ``train`` changes the product's training parameters, ``settings`` the experiment's own."""
    return Recipe(name=name, params=recipe_params(**(train or {})), train_queries=SHARE, evaluations_per_epoch=2, **settings)


RECIPES = {
    # Today's trainer: BCE on 0/1 labels, rows shuffled without regard to queries.
    "bce_random": _recipe("bce_random", sampler="random"),
    # Same loss, query-grouped batches (does the sampler alone change anything?).
    "bce_query": _recipe("bce_query"),
    "pairwise": _recipe("pairwise", loss=LossWeights(bce=1.0, pairwise=1.0)),
    "pairwise_labels": _recipe("pairwise_labels", loss=LossWeights(bce=1.0, pairwise=1.0, graded=False)),
    "pairwise_only": _recipe("pairwise_only", loss=LossWeights(bce=0.0, pairwise=1.0)),
    "listwise": _recipe("listwise", loss=LossWeights(bce=1.0, listwise=1.0)),
    "contrastive": _recipe("contrastive", loss=LossWeights(bce=1.0, contrastive=0.2)),
    "pairwise_contrastive": _recipe("pairwise_contrastive", loss=LossWeights(bce=1.0, pairwise=1.0, contrastive=0.2)),
    # hybrid_*: the lexical weight started at 10 (the cosine's scale); hybrid0_*: at 0.
    "hybrid_bce": _recipe("hybrid_bce", hybrid=True, lexical_init=10.0),
    "hybrid_pairwise": _recipe("hybrid_pairwise", hybrid=True, lexical_init=10.0, loss=LossWeights(bce=1.0, pairwise=1.0)),
    "pairwise_query_prior": _recipe("pairwise_query_prior", query_prior=True, loss=LossWeights(bce=1.0, pairwise=1.0)),
    "hybrid0_pairwise": _recipe("hybrid0_pairwise", hybrid=True, loss=LossWeights(bce=1.0, pairwise=1.0)),
    "hybrid_pairwise_query_prior": _recipe("hybrid_pairwise_query_prior", hybrid=True, query_prior=True,
                                           loss=LossWeights(bce=1.0, pairwise=1.0)),
    "pairwise_lr1e-3": _recipe("pairwise_lr1e-3", {"learning_rate": 1e-3}, loss=LossWeights(bce=1.0, pairwise=1.0)),
    "pairwise_lr2e-4": _recipe("pairwise_lr2e-4", {"learning_rate": 2e-4}, loss=LossWeights(bce=1.0, pairwise=1.0)),
    "pairwise_r4": _recipe("pairwise_r4", {"lora_r": 4, "lora_alpha": 8}, loss=LossWeights(bce=1.0, pairwise=1.0)),
    "pairwise_r64": _recipe("pairwise_r64", {"lora_r": 64, "lora_alpha": 128}, loss=LossWeights(bce=1.0, pairwise=1.0)),
    "pairwise_attention_only": _recipe("pairwise_attention_only", {"lora_targets": "query,key,value"},
                                       loss=LossWeights(bce=1.0, pairwise=1.0)),
    "pairwise_normalized": _recipe("pairwise_normalized", text_transform="normalize", loss=LossWeights(bce=1.0, pairwise=1.0)),
    # Today's recipe with one change each: normalised text; in-batch negatives (MultipleNegativesRankingLoss-like).
    "bce_normalized": _recipe("bce_normalized", sampler="random", text_transform="normalize"),
    "bce_contrastive": _recipe("bce_contrastive", sampler="random", loss=LossWeights(bce=1.0, contrastive=0.2)),
    # Today's recipe with a larger learning rate, and with a larger LoRA rank.
    "bce_lr1e-3": _recipe("bce_lr1e-3", {"learning_rate": 1e-3}, sampler="random"),
    "bce_r64": _recipe("bce_r64", {"lora_r": 64, "lora_alpha": 128}, sampler="random"),
}


def main() -> None:
    names = sys.argv[1:]
    unknown = [n for n in names if n not in RECIPES]
    if not names or unknown:
        sys.exit(f"usage: screen.py NAME... (unknown: {unknown}); known: {', '.join(RECIPES)}")
    data = splits()
    path = RESULTS / "recipes_screen.json"
    train_rows = len(subsample_queries(data["train"], SHARE, RECIPES[names[0]].params.seed))
    for name in names:
        started = time.time()
        trained = train(RECIPES[name], data)
        # The best state's validation scores, for paired comparisons between recipes (compare.py).
        (CACHE / "screen_scores").mkdir(parents=True, exist_ok=True)
        np.save(CACHE / "screen_scores" / f"{name}.npy", trained.validation_scores)
        # Read again before writing: another screen.py may have added its recipes meanwhile (runs in parallel).
        runs = json.loads(path.read_text())["runs"] if path.exists() else {}
        runs[name] = {**result_record(RECIPES[name], trained.history, train_rows), "wall_seconds": round(time.time() - started, 1),
                      "command": "OMP_NUM_THREADS=1 .venv/bin/python bench/recipes/screen.py " + name}
        write_result("screen", {
            "what": f"LoRA bi-encoder recipes on {SHARE:.0%} of the training queries ({train_rows} rows, seeded), one epoch, "
                    "scored on the whole validation split half-way and at the end; 'best' = higher query-grouped AUC",
            "split": "validation", "runs": runs,
        })


if __name__ == "__main__":
    main()
