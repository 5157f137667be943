"""Warm start: continue the production model on new data instead of starting from the base again.

Home Depot's queries are cut into an "old" and a "new" half by a second hash of the query
key (independent of the train/validation/test assignment), so each split has an old and a
new half. Then, with one recipe:

1. model A: trained on the old half of train (the "production" model of the last run);
2. cold: trained on the new half of train from the base model (what every run does today);
3. warm: trained on the new half of train starting from A (``build_model(init_from=A)``).

Each trains one epoch on the same seeded share of its half's queries. All three are scored
on the new and the old halves of the validation and test splits: warm vs cold on *new* is
the gain of warm starting, warm vs A on *old* is what the new training forgot.

    OMP_NUM_THREADS=1 .venv/bin/python bench/recipes/warm_start.py [RECIPE] [SHARE]

RECIPE is a name from ``screen.RECIPES`` (default ``pairwise``); SHARE the share of each
half's training queries used (default 0.5, ~14.8k rows).
"""

from __future__ import annotations

import dataclasses
import sys
import time

import pandas as pd
from common import CACHE, metrics, splits, summary_line, write_result
from harness import save, train
from screen import RECIPES


def halves(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(old, new): by the parity of hex digits 12-16 of the query key (the split uses digits 0-12)."""
    new = frame["query_group"].map(lambda g: int(g[12:16], 16) % 2 == 1)
    return frame[~new].reset_index(drop=True), frame[new].reset_index(drop=True)


def main() -> None:
    recipe_name = sys.argv[1] if len(sys.argv) > 1 else "pairwise"
    share = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
    started = time.time()
    data = splits()
    parts = {f"{split}_{half}": frame for split in ("train", "validation", "test")
             for half, frame in zip(("old", "new"), halves(data[split]), strict=True)}
    base_recipe = RECIPES[recipe_name]
    model_a_dir = str(CACHE / "warm_start" / "model_a")
    runs = {}
    plan = (("model_a", "old", ""), ("cold", "new", ""), ("warm", "new", model_a_dir))
    scores = {name: {} for name in ("validation", "test")}
    for name, half, init_from in plan:
        recipe = dataclasses.replace(base_recipe, name=name, train_queries=share, init_from=init_from)
        frames = {"train": parts[f"train_{half}"], "validation": parts[f"validation_{half}"],
                  **{key: frame for key, frame in parts.items() if not key.startswith("train")}}
        trained = train(recipe, frames)
        if name == "model_a":
            save(trained, recipe, model_a_dir)
        runs[name] = {"trained_on": f"train_{half}", "init_from": "model_a" if init_from else "base", "history": trained.history}
        for split in scores:
            for part in ("old", "new"):
                scores[split].setdefault(part, {})[name] = trained.scores(f"{split}_{part}")
    results = {}
    for split, by_part in scores.items():
        for part, by_model in by_part.items():
            candidate = "warm"
            results[f"{split}_{part}"] = metrics(parts[f"{split}_{part}"], by_model, candidate)
            print(f"{split}_{part}:", *(summary_line(m, results[f"{split}_{part}"]) for m in by_model), sep="\n  ", flush=True)
    write_result("warm_start", {
        "what": "Home Depot split into old/new query halves; model A on old train; then new train cold (from the base) vs warm "
                "(from A), one epoch each; scored on both halves of validation and test. Differences are warm minus each.",
        "recipe": recipe_name, "share_of_half_training_queries": share,
        "rows": {key: len(frame) for key, frame in parts.items()}, "runs": runs, "metrics": results,
        "seconds": round(time.time() - started, 1),
    })


if __name__ == "__main__":
    main()
