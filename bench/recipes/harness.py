"""A compact bi-encoder training loop for the recipe experiments (the product trainer is being rewritten).

It reuses the product's parts: ``ml.modeling.build_model`` (LoRA bi-encoder), the
tokenizer and truncation of ``ml.tokens``, ``ml.losses`` and ``ml.sampling``. What it adds
for speed on CPU: each batch embeds its *distinct* queries and product texts once (a query
with 8 rows in a query-grouped batch is encoded once, not 8 times), and the validation
split is scored the same way. A :class:`Recipe` is one experiment's settings; :func:`train`
returns the trained model and the per-evaluation history on the validation split.

Numbers from here are screening numbers: the recipe that wins must be reproduced by the
product trainer (``steps/finetune.py``) once it calls the same losses and sampler.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pandas as pd
import torch
from common import metrics

from searchtune import records
from searchtune.ml import lexical, modeling, text
from searchtune.ml.losses import LossWeights, combined_loss
from searchtune.ml.sampling import QueryGroupedBatches
from searchtune.ml.tokens import encode_pairs
from searchtune.params import TrainParams


@dataclasses.dataclass
class Recipe:
    """One experiment's training settings (defaults: today's trainer where it has the setting)."""

    name: str
    loss: LossWeights = dataclasses.field(default_factory=LossWeights)
    sampler: str = "query"  # "query": QueryGroupedBatches; "random": shuffled rows (today's trainer, minus length grouping)
    batch_rows: int = 32
    max_rows_per_query: int = 8
    learning_rate: float = 5e-4
    head_learning_rate: float = 1e-2
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: str = "query,key,value,dense"
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    hybrid: bool = False  # logit = scale*cos + lexical_weight*char_tfidf + bias
    lexical_init: float = 0.0  # starting lexical weight of a hybrid head (build_model starts it at 0)
    query_prior: bool = False  # logit += w . query_vector (a per-query bias; changes the pooled AUC only)
    epochs: int = 1
    train_queries: float = 1.0  # share of training queries used (seeded; whole queries)
    evaluations_per_epoch: int = 1
    seed: int = 13
    init_from: str = ""  # a saved model directory to continue from (warm start)
    text_transform: str = ""  # "" or "normalize" (searchtune.ml.text.normalize)


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
    return logits_of(model, vectors["query"], vectors["text"], torch.as_tensor(query_codes), torch.as_tensor(text_codes), lex).numpy()


def logits_of(model, query_vectors: torch.Tensor, text_vectors: torch.Tensor, query_index: torch.Tensor,
              text_index: torch.Tensor, lexical_scores: torch.Tensor | None) -> torch.Tensor:
    """Row logits from the distinct vectors; plus the experimental query prior (``w . q``) when the model has one."""
    cosine = (query_vectors[query_index] * text_vectors[text_index]).sum(-1)
    logits = model.pair_logits(cosine, lexical_scores)
    if hasattr(model, "query_prior"):
        logits = logits + model.query_prior(query_vectors).squeeze(-1)[query_index]
    return logits


def batches_of(recipe: Recipe, train: pd.DataFrame, epoch: int) -> list[np.ndarray]:
    if recipe.sampler == "query":
        return QueryGroupedBatches(train["query_group"], recipe.batch_rows, recipe.max_rows_per_query, recipe.seed).batches(epoch)
    order = np.random.default_rng([recipe.seed, epoch]).permutation(len(train))
    return [order[i:i + recipe.batch_rows] for i in range(0, len(order), recipe.batch_rows)]


def train_params(recipe: Recipe) -> TrainParams:
    """The product's parameter object for the settings it already has."""
    return TrainParams(lora_r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_targets=recipe.lora_targets,
                       learning_rate=recipe.learning_rate, head_learning_rate=recipe.head_learning_rate,
                       warmup_ratio=recipe.warmup_ratio, weight_decay=recipe.weight_decay, epochs=recipe.epochs,
                       batch_size=recipe.batch_rows, seed=recipe.seed)


def build(recipe: Recipe):
    base = modeling.resolve_base_model("")
    torch.manual_seed(recipe.seed)
    model = modeling.build_model(train_params(recipe), base, lexical_feature=recipe.hybrid, init_from=recipe.init_from)
    if recipe.hybrid and not recipe.init_from:
        with torch.no_grad():
            model.lexical_weight.fill_(recipe.lexical_init)
    return model, modeling.load_tokenizer(base)


def save(trained: Trained, recipe: Recipe, output_dir: str) -> None:
    """Write the model as the fine-tune step does (adapter, head, tokenizer, record), e.g. to warm-start from."""
    base = modeling.resolve_base_model("")
    record = records.ModelRecord(architecture="bi-encoder", max_length=64, lora_r=recipe.lora_r,
                                 base_model=records.BaseModelRef(**modeling.base_model_reference(base), bundled=True),
                                 training=train_params(recipe).model_dump())
    modeling.save_model(trained.model, modeling.load_tokenizer(base), output_dir, record)


@dataclasses.dataclass
class Trained:
    """A trained recipe: the model at its best validation query-grouped AUC and what scores other splits."""

    model: torch.nn.Module
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
    train_frame = subsample_queries(data["train"], recipe.train_queries, recipe.seed)
    validation = data["validation"]
    model, tokenizer = build(recipe)
    strings = pd.concat([f[c] for f in data.values() for c in ("query", "product_text")])
    texts = Texts(tokenizer, strings)
    lexical_scores, train_lexical = {}, None
    if recipe.hybrid:  # the gate's lexical baseline, fitted on the whole train split (never validation or test)
        vectorizer = lexical.fit_tfidf(pd.concat([data["train"]["query"], data["train"]["product_text"]]))

        def tfidf(frame: pd.DataFrame) -> np.ndarray:
            return lexical.tfidf_cosine(vectorizer, frame["query"].tolist(), frame["product_text"].tolist())

        lexical_scores = {name: tfidf(frame) for name, frame in data.items()}
        train_lexical = torch.as_tensor(tfidf(train_frame), dtype=torch.float32)
    if recipe.query_prior:  # a per-query bias w . q (zero at the start): ranks queries, never the rows of one query
        model.query_prior = torch.nn.Linear(model.encoder.config.hidden_size, 1, bias=False)
        torch.nn.init.zeros_(model.query_prior.weight)
    head_names = (*modeling.HEAD_PARAMETERS, "query_prior.weight")
    head = [p for n, p in model.named_parameters() if p.requires_grad and n in head_names]
    body = [p for n, p in model.named_parameters() if p.requires_grad and n not in head_names]
    optimizer = torch.optim.AdamW([{"params": body, "lr": recipe.learning_rate, "weight_decay": recipe.weight_decay},
                                   {"params": head, "lr": recipe.head_learning_rate, "weight_decay": 0.0}])
    total_steps = sum(len(batches_of(recipe, train_frame, e)) for e in range(recipe.epochs))
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, int(recipe.warmup_ratio * total_steps), total_steps)
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
    for epoch in range(recipe.epochs):
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
            logits = logits_of(model, query_vectors, text_vectors, query_index, text_index,
                               train_lexical[rows_t] if train_lexical is not None else None)
            loss, _ = combined_loss(recipe.loss, logits, labels[rows_t], targets[rows_t], groups[rows_t],
                                    query_vectors=query_vectors, text_vectors=text_vectors, query_index=query_index,
                                    text_index=text_index)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.item() * len(rows)
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
    settings = dataclasses.asdict(recipe)
    return {"recipe": settings, "train_rows": train_rows, "best": best, "history": history}
