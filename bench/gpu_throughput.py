"""Training throughput on a GPU (or CPU): the new trainer vs today's, side by side in one run.

Both train the same LoRA bi-encoder on the same tokenized rows, built by the same
``steps.finetune.prepare``; what differs is the loop:

- today: ``batch_size`` rows per step (length-grouped), AdamW (for-each), the loss read
  after every step (``optimizer_step(...).item()``: the host waits for the GPU);
- new: the same, or a token budget per step (``max_batch_tokens``), fused AdamW on GPU and
  the loss left on the device (``optimizer_step`` returns it unread), read once at the end;
- new+compile (``--compile``): the new loop on ``torch.compile(model, dynamic=True)``.

For each (trainer, batch size or token budget): examples/s, real tokens/s (padding not
counted), padded tokens/s, and MFU: the FLOPs of a training step, counted by
``torch.utils.flop_counter.FlopCounterMode`` on a real batch (per padded token, so it is
what the device computed), times the padded tokens per second, over the device's peak
(bf16 dense: H100/H200 989 TFLOPS; ``--peak-tflops`` for others; none on CPU). Scoring
(validation) rows/s at the old (256 rows) and new (``EVAL_BATCH_ROWS``) batch sizes too.
Variants run in rounds, alternating, so machine noise hits all alike; medians reported.

    python bench/gpu_throughput.py                      # GPU: Home Depot (../shared) or the sample
    python bench/gpu_throughput.py --quick              # minutes on CPU: proves the script works
    python bench/gpu_throughput.py --tokenized DIR --batch-sizes 32,64,256 --token-budgets 16384,32768,65536

Results: ``bench/results/gpu_throughput_<device>.json`` (``--out`` to choose).
"""

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from searchtune.data import sample_data  # noqa: E402
from searchtune.ml import batching  # noqa: E402
from searchtune.params import IngestParams, ModelParams, TrainParams  # noqa: E402
from searchtune.steps import finetune, ingest, tokenize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOME_DEPOT = ROOT / ".." / "shared" / "data" / "home_depot_search_relevance" / "train.parquet"
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 125.0}  # bf16 dense


def tokenized_data(args) -> tuple[str, str]:
    """The tokenized folder to train on (tokenizing ``--data`` into a temporary one when needed) and its source."""
    if args.tokenized:
        return args.tokenized, args.tokenized
    data = args.data or (str(HOME_DEPOT.resolve()) if HOME_DEPOT.exists() and not args.quick else sample_data.default_sample_path())
    work = tempfile.mkdtemp(prefix="gpu-throughput-")
    ingest.ingest(f"{work}/splits", IngestParams(data=data, text_columns="product_title"))
    tokenize.tokenize(f"{work}/splits", f"{work}/tokenized", ModelParams(max_length=args.max_length))
    return f"{work}/tokenized", os.path.relpath(data, ROOT)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_padded_token(run, batch) -> float:
    """FLOPs of one forward and backward pass on ``batch`` (LoRA: no weight gradients of the frozen weights), per padded token."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = batching.to_device(batch, run.device)
    counter = FlopCounterMode(display=False)
    with counter:
        with batching.autocast(run.device, run.config.precision):
            logits = run.model(batch)
        torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["label"]).backward()
    run.model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / sum(batch[k].numel() for k in batch if k.endswith("_mask"))


def train_variant(tokenized: str, trainer: str, config: TrainParams, warmup: int, steps: int) -> dict:
    """Time ``steps`` optimizer steps (after ``warmup``) of one trainer on the first batches of epoch 0."""
    run = finetune.prepare(tokenized, config)
    if trainer == "today":
        # Today's optimizer: the default (for-each) AdamW, whatever the device.
        groups = [{k: v for k, v in g.items() if k in ("params", "lr", "weight_decay")} for g in run.optimizer.param_groups]
        run.optimizer = torch.optim.AdamW(groups)
        from transformers import get_linear_schedule_with_warmup

        run.scheduler = get_linear_schedule_with_warmup(run.optimizer, 0, 10**9)
    if trainer == "new+compile":
        run.forward = torch.compile(run.model, dynamic=True)
    run.forward.train()
    batches = (batch for epoch in itertools.count() for batch in run.epoch_batches(epoch))  # big budgets outrun one epoch
    first = next(batches)
    flops_token = flops_per_padded_token(run, first)
    examples = real = padded = 0
    losses = []
    for index in range(warmup + steps):
        batch = first if index == 0 else next(batches)
        if index == warmup:
            sync(run.device)
            started = time.perf_counter()
        loss = finetune.optimizer_step(run.loss(batch), run.forward, run.optimizer, run.scheduler)
        losses.append(loss.item() if trainer == "today" else loss)
        if index >= warmup:
            examples += len(batch["label"])
            real += sum(int(batch[k].sum()) for k in batch if k.endswith("_mask"))
            padded += sum(batch[k].numel() for k in batch if k.endswith("_mask"))
    final_loss = float(losses[-1])  # the new loop's one read of the device, inside the timed span
    sync(run.device)
    seconds = time.perf_counter() - started
    return {"examples_per_second": examples / seconds, "real_tokens_per_second": real / seconds,
            "padded_tokens_per_second": padded / seconds, "rows_per_step": examples / steps,
            "flops_per_second": flops_token * padded / seconds, "final_loss": final_loss}


def eval_variant(tokenized: str, batch_size: int) -> dict:
    run = finetune.prepare(tokenized, TrainParams(max_train_rows=8))
    batching.predict_logits(run.model, run.validation.take(np.arange(min(len(run.validation), batch_size))), run.pad_id,
                            run.device, batch_size=batch_size)  # warm-up
    sync(run.device)
    started = time.perf_counter()
    batching.predict_logits(run.model, run.validation, run.pad_id, run.device, batch_size=batch_size)
    sync(run.device)
    return {"rows_per_second": len(run.validation) / (time.perf_counter() - started)}


def peak_flops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS.items() if key in name), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenized", help="a tokenize step output folder (default: tokenize --data)")
    parser.add_argument("--data", help="judgements to tokenize (default: Home Depot in ../shared, else the bundled sample)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-sizes", default="32,64,256", help="rows per step, for today's trainer and the new one")
    parser.add_argument("--token-budgets", default="16384,32768,65536", help="max_batch_tokens, for the new trainer")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also measure the new loop on torch.compile (slow to build)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (default: known GPUs' bf16 dense peak)")
    parser.add_argument("--quick", action="store_true", help="tiny run on the bundled sample: shows the script works on CPU")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.token_budgets, args.steps, args.warmup, args.rounds = "8,16", "256,512", 3, 1, 1
        args.max_length = 32
    device = batching.pick_device()
    tokenized, source = tokenized_data(args)
    base = TrainParams(max_length=args.max_length, max_train_rows=2000 if args.quick else 0, seed=0)
    variants = [(trainer, f"batch_size={b}", base.model_copy(update={"batch_size": int(b)}))
                for b in args.batch_sizes.split(",") for trainer in ("today", "new")]
    variants += [(trainer, f"max_batch_tokens={t}", base.model_copy(update={"max_batch_tokens": int(t)}))
                 for t in args.token_budgets.split(",") for trainer in (["new", "new+compile"] if args.compile else ["new"])]
    raw: dict[str, list[dict]] = {}
    for round_index in range(args.rounds):
        for trainer, shape, config in variants:
            result = train_variant(tokenized, trainer, config, args.warmup, args.steps)
            raw.setdefault(f"{trainer} {shape}", []).append(result)
            print(f"round {round_index + 1}/{args.rounds} {trainer} {shape}: {result['examples_per_second']:.1f} examples/s",
                  file=sys.stderr, flush=True)
        for size in (256, batching.EVAL_BATCH_ROWS.get(device.type, 256)):
            raw.setdefault(f"scoring batch_size={size}", []).append(eval_variant(tokenized, size))
    peak = peak_flops(device, args.peak_tflops)
    median = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for name, runs in raw.items()}
    for values in median.values():
        if "flops_per_second" in values:
            values["mfu"] = values["flops_per_second"] / peak if peak else None
    today_best = max(v["examples_per_second"] for k, v in median.items() if k.startswith("today "))
    new_best = max(v["examples_per_second"] for k, v in median.items() if k.startswith("new"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    summary = {
        "device": name + (" -- quick mode: a check that the script runs, not a GPU figure" if args.quick else ""),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "command": "python bench/gpu_throughput.py " + " ".join(sys.argv[1:]),
        "data": source, "max_length": args.max_length, "steps": args.steps, "warmup_steps": args.warmup, "rounds": args.rounds,
        "peak_flops": peak, "median": {k: {m: (round(x, 4) if isinstance(x, float) else x) for m, x in v.items()}
                                         for k, v in median.items()},
        "best_new_over_best_today": round(new_best / today_best, 2),
        **({"note": "--quick on CPU: shows that the script runs end to end; a few steps per variant on a shared machine, "
                    "so the figures and ratios are not a measurement of either trainer"} if args.quick else {}),
        "raw": raw,
    }
    tag = "cpu_quick" if args.quick else ("cpu" if device.type == "cpu" else torch.cuda.get_device_name(device).split()[1].lower())
    out = Path(args.out or ROOT / "bench" / "results" / f"gpu_throughput_{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "raw"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
