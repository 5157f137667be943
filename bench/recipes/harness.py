"""The recipe experiments' bi-encoder training loop: the product's parts, research objectives and batches.

From the product: the training parameters and their defaults (``params.TrainParams``), the
LoRA bi-encoder (``ml.modeling.build_model``, under ``heads.ResearchBiEncoder``), the
tokenizer's truncation (``ml.tokens``), the optimizer and schedule
(``steps.finetune.build_optimizer``) and the optimizer step (``steps.finetune.optimizer_step``).
From here: the objectives (``losses``), query-grouped batches (``sampling``), text
normalisation (``text``) and the research heads (``heads``). What the loop adds for speed on
CPU: each batch embeds its *distinct* queries and product texts once (a query with 8 rows in
a query-grouped batch is encoded once, not 8 times), and the validation split is scored the
same way. A :class:`Recipe` is one experiment's settings; :func:`train` returns the trained
model and the per-evaluation history on the validation split.

Numbers from here are screening numbers: a recipe that wins must be reproduced by the
fine-tune step (``steps/finetune.py``) before it becomes the product's.
"""

from __future__ import annotations

import dataclasses
import math
import time

import heads
import numpy as np
import pandas as pd
import text
import torch
from common import metrics
from losses import LossWeights, combined_loss
from sampling import QueryGroupedBatches

from searchtune import records
from searchtune.ml import lexical, modeling
from searchtune.ml.tokens import encode_pairs
from searchtune.params import TrainParams, parse
from searchtune.steps.finetune import build_optimizer, optimizer_step


def recipe_params(**changes) -> TrainParams:
    """The product's training parameters, one epoch, with ``changes`` (validated; every other default is the product's)."""
    return parse(TrainParams, {"epochs": 1, **changes})


@dataclasses.dataclass
class Recipe:
    """One experiment's settings: the product's training parameters and what only the experiments have.

    Of ``params`` the loop uses the optimizer's settings, the LoRA settings, ``epochs``,
    ``batch_size`` (rows per batch) and ``seed``.
    """

    name: str
    params: TrainParams = dataclasses.field(default_factory=recipe_params)
    loss: LossWeights = dataclasses.field(default_factory=LossWeights)
    sampler: str = "query"  # "query": QueryGroupedBatches; "random": shuffled rows (the product's, minus length grouping)
    max_rows_per_query: int = 8
    hybrid: bool = False  # logit = scale*cos + lexical_weight*char_tfidf + bias (heads.ResearchBiEncoder)
    lexical_init: float = 0.0  # starting lexical weight of a hybrid head
    query_prior: bool = False  # logit += w . query_vector (a per-query bias; changes the pooled AUC only)
    train_queries: float = 1.0  # share of training queries used (seeded; whole queries)
    evaluations_per_epoch: int = 1
    init_from: str = ""  # a saved model directory to continue from (TrainParams.init_from names registry versions)
    text_transform: str = ""  # "" or "normalize" (text.normalize)


def subsample_queries(frame: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """A seeded share of the frame's queries, with all their rows."""
    if share >= 1:
        return frame
    groups = frame["query_group"].drop_duplicates().to_numpy()
    keep = set(np.random.default_rng(seed).choice(groups, int(round(share * len(groups))), replace=False))
    return frame[frame["query_group"].isin(keep)].reset_index(drop=True)


class Texts:
    """Token ids of distinct strings, tokenized once with the product's truncation rule."""

    def __init__(self, tokenizer, strings, max_length: int = 64):
        self.index = {s: i for i, s in enumerate(dict.fromkeys(strings))}
        columns, _ = encode_pairs(tokenizer, "bi-encoder", list(self.index), [], max_length)
        self.ids = columns["query_ids"]
        self.pad = tokenizer.pad_token_id or 0

    def batch(self, strings: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.ids[self.index[s]] for s in strings]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.as_tensor(r)
            mask[i, :len(r)] = 1
        return ids, mask


def embed(model, texts: Texts, strings: list[str], batch_size: int = 256) -> torch.Tensor:
    """Unit vectors of ``strings`` (with gradients when the model is training)."""
    out = []
    for start in range(0, len(strings), batch_size):
        out.append(model.embed(*texts.batch(strings[start:start + batch_size])))
    return torch.cat(out)


@torch.no_grad()
def score(model, texts: Texts, frame: pd.DataFrame, lexical_scores: np.ndarray | None) -> np.ndarray:
    """Logits of every row of ``frame``, each distinct string embedded once (longest first)."""
    model.eval()
    query_codes, queries = pd.factorize(frame["query"])
    text_codes, products = pd.factorize(frame["product_text"])
    vectors = {}
    for name, strings in (("query", list(queries)), ("text", list(products))):
        order = np.argsort([-len(texts.ids[texts.index[s]]) for s in strings], kind="stable")
        ordered = embed(model, texts, [strings[i] for i in order])
        result = torch.empty_like(ordered)
        result[torch.as_tensor(order)] = ordered
        vectors[name] = result
    lex = torch.as_tensor(lexical_scores, dtype=torch.float32) if lexical_scores is not None else None
    return model.logits_of_vectors(vectors["query"], vectors["text"], torch.as_tensor(query_codes), torch.as_tensor(text_codes),
                                   lex).numpy()


def batches_of(recipe: Recipe, train: pd.DataFrame, epoch: int) -> list[np.ndarray]:
    rows, seed = recipe.params.batch_size, recipe.params.seed
    if recipe.sampler == "query":
        return QueryGroupedBatches(train["query_group"], rows, recipe.max_rows_per_query, seed).batches(epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(train))
    return [order[i:i + rows] for i in range(0, len(order), rows)]


def build(recipe: Recipe):
    base = modeling.resolve_base_model("")
    torch.manual_seed(recipe.params.seed)
    model = heads.build(recipe.params, base, lexical_weight=recipe.lexical_init if recipe.hybrid else None,
                        query_prior=recipe.query_prior, init_from=recipe.init_from)
    return model, modeling.load_tokenizer(base)


def save(trained: Trained, recipe: Recipe, output_dir: str) -> None:
    """Write the model as the fine-tune step does (adapter, head, tokenizer, record), e.g. to warm-start from."""
    base = modeling.resolve_base_model("")
    record = records.ModelRecord(architecture="bi-encoder", max_length=recipe.params.max_length, lora_r=recipe.params.lora_r,
                                 base_model=records.BaseModelRef(**modeling.base_model_reference(base, bundled=True)),
                                 training=recipe.params.model_dump())
    modeling.save_model(trained.model, modeling.load_tokenizer(base), output_dir, record)


@dataclasses.dataclass
class Trained:
    """A trained recipe: the model at its best validation query-grouped AUC and what scores other splits."""

    model: heads.ResearchBiEncoder
    history: list[dict]  # one record per validation evaluation
    texts: Texts  # every split's strings, tokenized
    frames: dict[str, pd.DataFrame]  # the splits as trained on (after any text transform)
    lexical_scores: dict[str, np.ndarray]  # per split, for a hybrid head
    validation_scores: np.ndarray  # the validation logits of the kept (best) state

    def scores(self, split: str) -> np.ndarray:
        return score(self.model, self.texts, self.frames[split], self.lexical_scores.get(split))


def train(recipe: Recipe, data: dict[str, pd.DataFrame], log=print) -> Trained:
    """Train one recipe; evaluate on the validation split ``evaluations_per_epoch`` times per epoch."""
    if recipe.text_transform == "normalize":
        data = {name: frame.assign(query=frame["query"].map(text.normalize), product_text=frame["product_text"].map(text.normalize))
                for name, frame in data.items()}
    elif recipe.text_transform:
        raise ValueError(f"unknown text_transform {recipe.text_transform!r}")
    train_frame = subsample_queries(data["train"], recipe.train_queries, recipe.params.seed)
    validation = data["validation"]
    model, tokenizer = build(recipe)
    strings = pd.concat([f[c] for f in data.values() for c in ("query", "product_text")])
    texts = Texts(tokenizer, strings, recipe.params.max_length)
    lexical_scores, train_lexical = {}, None
    if recipe.hybrid:  # the gate's lexical baseline, fitted on the whole train split (never validation or test)
        vectorizer = lexical.fit_tfidf(pd.concat([data["train"]["query"], data["train"]["product_text"]]))

        def tfidf(frame: pd.DataFrame) -> np.ndarray:
            return lexical.tfidf_cosine(vectorizer, frame["query"].tolist(), frame["product_text"].tolist())

        lexical_scores = {name: tfidf(frame) for name, frame in data.items()}
        train_lexical = torch.as_tensor(tfidf(train_frame), dtype=torch.float32)
    epochs = recipe.params.epochs
    total_steps = sum(len(batches_of(recipe, train_frame, e)) for e in range(epochs))
    optimizer, scheduler = build_optimizer(model, recipe.params, total_steps, torch.device("cpu"))
    groups = torch.as_tensor(pd.factorize(train_frame["query_group"])[0])
    labels = torch.as_tensor(train_frame["label"].to_numpy(), dtype=torch.float32)
    targets = torch.as_tensor(train_frame["target"].to_numpy(), dtype=torch.float32)
    history, best, best_state, best_scores = [], (-1.0, -1.0), None, None

    def evaluate(epoch: float, seconds: float, loss: float) -> None:
        nonlocal best, best_state, best_scores
        scores = score(model, texts, validation, lexical_scores.get("validation"))
        result = metrics(validation, {"candidate": scores}, "candidate")["models"]["candidate"]
        record = {"epoch": round(epoch, 3), "train_loss": round(loss, 5), "train_seconds": round(seconds, 1),
                  "validation": {m: v["value"] for m, v in result.items()}, "head": model.head_state_floats()}
        history.append(record)
        log(f"[{recipe.name}] {record}")
        key = (result["gauc"]["value"], result["roc_auc"]["value"])
        if key > best:
            best, best_scores = key, scores
            best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        model.train()

    train_seconds = 0.0
    for epoch in range(epochs):
        batches = batches_of(recipe, train_frame, epoch)
        checkpoints = {math.ceil(len(batches) * (k + 1) / recipe.evaluations_per_epoch) for k in range(recipe.evaluations_per_epoch)}
        model.train()
        segment, epoch_seconds, loss_sum, seen = time.perf_counter(), 0.0, 0.0, 0  # training time excludes evaluations
        for step, rows in enumerate(batches, start=1):
            frame = train_frame.iloc[rows]
            query_codes, queries = pd.factorize(frame["query"])
            text_codes, products = pd.factorize(frame["product_text"])
            query_vectors = embed(model, texts, list(queries))
            text_vectors = embed(model, texts, list(products))
            query_index, text_index = torch.as_tensor(query_codes), torch.as_tensor(text_codes)
            rows_t = torch.as_tensor(rows)
            logits = model.logits_of_vectors(query_vectors, text_vectors, query_index, text_index,
                                             train_lexical[rows_t] if train_lexical is not None else None)
            loss, _ = combined_loss(recipe.loss, logits, labels[rows_t], targets[rows_t], groups[rows_t],
                                    query_vectors=query_vectors, text_vectors=text_vectors, query_index=query_index,
                                    text_index=text_index)
            loss_sum += optimizer_step(loss, model, optimizer, scheduler).item() * len(rows)
            seen += len(rows)
            if step % 100 == 0:
                log(f"[{recipe.name}] epoch {epoch + 1} step {step}/{len(batches)} loss {loss_sum / seen:.4f} "
                    f"{seen / (epoch_seconds + time.perf_counter() - segment):.1f} rows/s")
            if step in checkpoints:
                elapsed = time.perf_counter() - segment
                epoch_seconds, train_seconds = epoch_seconds + elapsed, train_seconds + elapsed
                evaluate(epoch + step / len(batches), train_seconds, loss_sum / seen)
                segment = time.perf_counter()
    if best_state is not None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in best_state:
                    p.copy_(best_state[n])
    return Trained(model, history, texts, data, lexical_scores, best_scores)


def result_record(recipe: Recipe, history: list[dict], train_rows: int) -> dict:
    """What a results file keeps about one recipe run."""
    best = max(history, key=lambda r: (r["validation"]["gauc"], r["validation"]["roc_auc"]))
    # Flat, as in the results files written before the recipes took TrainParams (batch_rows is now batch_size).
    settings = {**recipe.params.model_dump(), **{f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe) if f.name != "params"},
                "loss": dataclasses.asdict(recipe.loss)}
    return {"recipe": settings, "train_rows": train_rows, "best": best, "history": history}
