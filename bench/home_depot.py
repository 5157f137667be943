"""Home Depot benchmark: the README's documented command on the real judgements.

Runs `searchtune run` exactly as the README shows it (label: relevance >= 2.5, default
architecture), then scores a TF-IDF cosine baseline on the same test rows, and writes
the candidate's, the untuned model's and TF-IDF's test metrics with the wall time to
bench/results/home_depot.json. Usage:

    python bench/home_depot.py [extra `searchtune run` flags...]

Needs ../shared/data/home_depot_search_relevance/train.parquet (never copied into the repo).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import normalize

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "home_depot_search_relevance" / "train.parquet"
# The README's command, word for word (paths relative to the repository root).
README_COMMAND = [
    "searchtune", "run", "--data", "../shared/data/home_depot_search_relevance/train.parquet",
    "--text-columns", "product_title", "--positive-threshold", "2.5", "--epochs", "2",
    "--registry", ".searchtune/home-depot-registry", "--output-dir", ".searchtune/home-depot-runs",
]


def tfidf_scores(train_texts: list[str], queries: list[str], texts: list[str]) -> np.ndarray:
    """Cosine of word and character n-gram TF-IDF vectors, fitted on the train split."""
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2)
    vectorizer.fit(train_texts)
    q = normalize(vectorizer.transform(queries))
    t = normalize(vectorizer.transform(texts))
    return np.asarray(q.multiply(t).sum(axis=1)).ravel()


def main() -> int:
    if not DATA.exists():
        print(f"{DATA} is missing: this benchmark needs the shared Home Depot data", file=sys.stderr)
        return 2
    from searchtune.steps import ingest

    command = README_COMMAND + sys.argv[1:]
    started = time.time()
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.time() - started
    runs = ROOT / ".searchtune" / "home-depot-runs"
    run_root = max(runs.iterdir(), key=lambda p: p.stat().st_mtime)  # each run owns one folder
    (run_dir,) = [d for d in run_root.iterdir() if d.is_dir()]
    evaluation = json.loads((run_dir / "evaluate" / "evaluation" / "evaluation.json").read_text())
    metrics = evaluation["models"]
    splits = run_dir / "ingest" / "splits"
    train, test = ingest.read_split(str(splits), "train"), ingest.read_split(str(splits), "test")
    tfidf = tfidf_scores(train["query"].tolist() + train["product_text"].tolist(), test["query"].tolist(), test["product_text"].tolist())
    model = evaluation["model"]
    result = {
        "command": " ".join(command),
        "bench_command": "python bench/home_depot.py " + " ".join(sys.argv[1:]),
        "data": "../shared/data/home_depot_search_relevance/train.parquet (74,067 rows; label relevance >= 2.5)",
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "wall_seconds": round(wall, 1),
        "training_seconds": model["training_seconds"],
        "test_rows": evaluation["test_rows"],
        "test_roc_auc": {
            "candidate": metrics["candidate"]["roc_auc"],
            "untuned_base_cosine": metrics["untuned_base"]["roc_auc"],
            "tfidf_cosine": round(float(roc_auc_score(test["label"], tfidf)), 5),
        },
        "candidate": metrics["candidate"],
        "untuned_base": metrics["untuned_base"],
        "epochs": model["epochs"],
        "best_epoch": model["best_epoch"],
        "architecture": model["architecture"],
        "lora_r": model["lora_r"],
        "blessing": evaluation["blessing"]["reason"],
    }
    out = ROOT / "bench" / "results" / "home_depot.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["test_roc_auc"], indent=2), f"wall {wall:.0f} s", f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
