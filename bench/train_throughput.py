"""Training throughput: searchtune's trainer vs the plain recipe, side by side.

Both train the same bi-encoder (mean-pooled MiniLM, cosine x scale + bias, BCE) on the
same rows of the same data, alternating rounds so machine noise hits both alike:

- searchtune: pre-tokenized ids (the tokenize step), length-grouped batches with dynamic
  padding, LoRA r=16 on attention + dense.
- plain recipe: full fine-tune, every row tokenized on its own inside the loop, padded to
  128 tokens.

Reports median examples/s over the rounds, the ratio, and the share of processed tokens
that are real (not padding). Usage:

    python bench/train_throughput.py [--data PATH] [--rounds 3] [--steps 12]

Default data: the Home Depot pairs in ../shared when present, else the bundled sample.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from searchtune.data import sample_data
from searchtune.ml import batching, modeling, tokens
from searchtune.params import IngestParams, TrainParams
from searchtune.steps import finetune  # noqa: E402
from searchtune.steps.ingestion import rows as ingest_rows  # noqa: E402

HOME_DEPOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "home_depot_search_relevance" / "train.parquet"
BATCH = 32
PLAIN_LENGTH = 128


def load_rows(data: str | None, rows: int) -> tuple[list[str], list[str], np.ndarray, str]:
    if data is None:
        data = str(HOME_DEPOT.resolve()) if HOME_DEPOT.exists() else sample_data.default_sample_path()
    mapping = IngestParams(text_columns="product_title")
    raw = pq.read_table(data, columns=[mapping.query_column, *mapping.text_column_list, mapping.label_column])
    clean = ingest_rows.validate(raw, mapping).clean.to_pandas()
    clean = clean.sample(n=min(rows, len(clean)), random_state=0)
    return clean["query"].tolist(), clean["product_text"].tolist(), clean["label"].to_numpy().astype(np.float32), data


def optimizer_for(model, lr: float, steps: int):
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    return optimizer, get_linear_schedule_with_warmup(optimizer, 0, steps * 100)


def searchtune_round(queries, texts, labels, steps: int, base: str, tokenizer, seed: int) -> dict:
    started = time.perf_counter()
    columns, _ = tokens.encode_arrays(tokenizer, "bi-encoder", queries, texts, max_length=64)
    tokenize_seconds = time.perf_counter() - started
    split = batching.TokenizedSplit.from_columns(columns, labels)
    model = modeling.build_model(TrainParams(lora_r=16), base)
    model.train()
    optimizer, scheduler = optimizer_for(model, 5e-4, steps)
    batches = batching.length_grouped_batches(split.lengths, BATCH, np.random.default_rng(seed))[:steps]
    real = processed = 0
    device = torch.device("cpu")
    started = time.perf_counter()
    for rows in batches:
        batch = batching.collate(split, rows, tokenizer.pad_token_id, device)
        finetune.optimizer_step(finetune.batch_loss(model, batch, batch["label"], device), model, optimizer, scheduler).item()
        real += int(batch["query_mask"].sum() + batch["text_mask"].sum())
        processed += int(batch["query_mask"].numel() + batch["text_mask"].numel())
    seconds = time.perf_counter() - started
    examples = sum(len(b) for b in batches)
    # Tokenizing is a separate pipeline step; charge its per-row cost to the rows trained here.
    tokenize_share = tokenize_seconds * examples / len(queries)
    return {"examples_per_second": examples / seconds, "examples_per_second_with_tokenize": examples / (seconds + tokenize_share),
            "real_token_ratio": real / processed}


def plain_round(queries, texts, labels, steps: int, base: str, tokenizer, seed: int) -> dict:
    model = modeling.build_model(TrainParams(lora_r=0), base)
    model.train()
    optimizer, scheduler = optimizer_for(model, 2e-5, steps)
    order = np.random.default_rng(seed).permutation(len(queries))
    real = processed = 0
    device = torch.device("cpu")
    started = time.perf_counter()
    for step in range(steps):
        rows = order[step * BATCH : (step + 1) * BATCH]
        batch = {}
        for side, source in (("query", queries), ("text", texts)):
            encoded = [tokenizer(source[i], padding="max_length", truncation=True, max_length=PLAIN_LENGTH, return_tensors="pt") for i in rows]
            batch[f"{side}_ids"] = torch.cat([e["input_ids"] for e in encoded])
            batch[f"{side}_mask"] = torch.cat([e["attention_mask"] for e in encoded])
        loss = finetune.batch_loss(model, batch, torch.as_tensor(labels[rows]), device)
        finetune.optimizer_step(loss, model, optimizer, scheduler).item()
        real += int(batch["query_mask"].sum() + batch["text_mask"].sum())
        processed += int(batch["query_mask"].numel() + batch["text_mask"].numel())
    seconds = time.perf_counter() - started
    return {"examples_per_second": steps * BATCH / seconds, "real_token_ratio": real / processed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per round and trainer")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    queries, texts, labels, data = load_rows(args.data, rows=4000)
    base = modeling.resolve_base_model("")
    tokenizer = modeling.load_tokenizer(base)
    results = {"searchtune": [], "plain": []}
    for round_index in range(args.rounds):
        for name, fn in (("searchtune", searchtune_round), ("plain", plain_round)):
            result = fn(queries, texts, labels, args.steps, base, tokenizer, seed=round_index)
            results[name].append(result)
            print(f"round {round_index + 1}/{args.rounds} {name}: {result}", file=sys.stderr, flush=True)
    median = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for name, runs in results.items()}
    summary = {
        "command": "python bench/train_throughput.py " + " ".join(sys.argv[1:]),
        "data": os.path.relpath(data, Path(__file__).parents[1]),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "batch_size": BATCH, "steps_per_round": args.steps, "rounds": args.rounds,
        "median": {name: {k: round(v, 3) for k, v in m.items()} for name, m in median.items()},
        "speedup_examples_per_second": round(median["searchtune"]["examples_per_second"] / median["plain"]["examples_per_second"], 2),
        "speedup_including_tokenize_step": round(median["searchtune"]["examples_per_second_with_tokenize"] / median["plain"]["examples_per_second"], 2),
        "rounds_raw": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds_raw"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
