"""Shared parts of the Home Depot recipe experiments: the splits, embeddings, metrics, results.

The splits are the pipeline's own (``steps.ingest`` with the README's Home Depot mapping:
``product_title``, label relevance >= 2.5, 80/10/10 by query hash), written once to
``.searchtune/recipes/splits`` (git-ignored; the data itself is never copied into the
repository). Choices are made on the validation split; the test split is scored only for
the final recipe (``final.py``).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from searchtune.ml.stats import compute_statistics  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "home_depot_search_relevance" / "train.parquet"
CACHE = ROOT / ".searchtune" / "recipes"
RESULTS = ROOT / "bench" / "results"
MACHINE = (f"{os.cpu_count()} CPU cores shared with other people's work, no GPU; "
           f"torch threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")


def splits() -> dict[str, pd.DataFrame]:
    """The pipeline's Home Depot train/validation/test frames (ingested once, then cached)."""
    from searchtune.params import IngestParams
    from searchtune.steps import ingest
    from searchtune.steps import splits as split_files

    folder = CACHE / "splits"
    if not (folder / "test.parquet").exists():
        if not DATA.exists():
            sys.exit(f"{DATA} is missing: these experiments need the shared Home Depot data")
        ingest.ingest(str(folder), IngestParams(data=str(DATA), text_columns="product_title", positive_threshold=2.5))
    return {name: split_files.read_split(str(folder), name) for name in ("train", "validation", "test")}


def metrics(frame: pd.DataFrame, scores: dict[str, np.ndarray], candidate: str, resamples: int = 1000) -> dict:
    """Pooled AUC, query-grouped AUC and nDCG@10 (graded gains) of each model, with intervals and
    the candidate's paired differences (``searchtune.ml.stats``)."""
    result = compute_statistics(frame["query_group"].to_numpy(), frame["label"].to_numpy(), scores, gains=frame["target"].to_numpy(),
                                candidate=candidate, resamples=resamples)
    keep = ("roc_auc", "gauc", "ndcg_at_10")
    out = {"counts": result.counts.model_dump(), "models": {}, "differences": {}}
    for name, values in result.models.items():
        out["models"][name] = {m: _rounded(values[m].model_dump()) for m in keep if m in values}
    for name, values in result.comparisons.items():
        out["differences"][f"{candidate} - {name}"] = {m: _rounded(values[m].model_dump()) for m in keep if m in values}
    return out


def _rounded(values: dict) -> dict:
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in values.items()}


def summary_line(name: str, scores: dict) -> str:
    """One line: gauc and pooled AUC of a model from :func:`metrics` output."""
    m = scores["models"][name]
    return f"{name}: gauc {m['gauc']['value']:.4f} [{m['gauc']['low']:.4f}, {m['gauc']['high']:.4f}]  roc_auc {m['roc_auc']['value']:.4f}"


def write_result(name: str, payload: dict) -> Path:
    """Write ``bench/results/recipes_<name>.json`` with the command and the machine."""
    path = RESULTS / f"recipes_{name}.json"
    payload = {"command": "OMP_NUM_THREADS=1 .venv/bin/python " + " ".join(sys.argv), "machine": MACHINE,
               "python": platform.python_version(), "torch": torch.__version__,
               "written": time.strftime("%Y-%m-%d %H:%M:%S"), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


@torch.no_grad()
def embed_unique(model, tokenizer, texts: list[str], max_length: int = 64, batch_size: int = 256) -> np.ndarray:
    """Unit embeddings of ``texts`` with a bi-encoder (``model.embed``), longest first to pad little."""
    from searchtune.ml.tokens import encode_pairs

    model.eval()
    columns, _ = encode_pairs(tokenizer, "bi-encoder", texts, [], max_length)
    ids = columns["query_ids"]
    order = np.argsort([-len(i) for i in ids], kind="stable")
    chunks = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(ids[i]) for i in rows)
        tokens = torch.full((len(rows), width), tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            tokens[r, :len(ids[i])] = torch.as_tensor(ids[i])
            mask[r, :len(ids[i])] = 1
        chunks.append(model.embed(tokens, mask).float().numpy())
    out = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
    out[order] = np.concatenate(chunks)
    return out


def untuned_vectors(strings) -> dict[str, np.ndarray]:
    """Untuned base-model unit vectors of distinct strings, cached in ``.searchtune/recipes`` across scripts."""
    from transformers import AutoModel

    from searchtune.ml import modeling

    path = CACHE / "untuned_vectors.npz"
    cached = {}
    if path.exists():
        stored = np.load(path, allow_pickle=True)
        cached = dict(zip(stored["strings"].tolist(), stored["vectors"], strict=True))
    missing = [s for s in dict.fromkeys(strings) if s not in cached]
    if missing:
        base = modeling.resolve_base_model("")
        model = modeling.BiEncoder(AutoModel.from_pretrained(base))
        vectors = embed_unique(model, modeling.load_tokenizer(base), missing)
        cached.update(zip(missing, vectors, strict=True))
        np.savez(path, strings=np.array(list(cached), dtype=object), vectors=np.stack(list(cached.values())))
    return cached


def pair_cosines(model, tokenizer, frame: pd.DataFrame, max_length: int = 64) -> np.ndarray:
    """Cosine of each (query, product_text) row, embedding each distinct string once."""
    query_codes, queries = pd.factorize(frame["query"])
    text_codes, texts = pd.factorize(frame["product_text"])
    query_vectors = embed_unique(model, tokenizer, list(queries), max_length)
    text_vectors = embed_unique(model, tokenizer, list(texts), max_length)
    return (query_vectors[query_codes] * text_vectors[text_codes]).sum(1)
