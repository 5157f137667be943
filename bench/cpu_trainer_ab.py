"""The default single-process CPU trainer of two source trees, A/B in one run: did a change slow it down?

Each round trains the default ``searchtune run`` path (``steps.finetune.finetune``, one
process, ``TrainParams`` defaults but a sample of rows and one epoch) once with the
baseline tree's code and once with this tree's, each in a fresh process with the same
thread count, alternating which goes first, so the load of a shared machine hits both
alike. Reports each round's examples/s (the trainer's own epoch record) and the median
ratio new / baseline.

    git archive <baseline-commit> src | tar -x -C /tmp/base
    python bench/cpu_trainer_ab.py --baseline-src /tmp/base/src --tokenized TOKENIZED_DIR --rounds 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = """
import json, sys
from searchtune.params import TrainParams
from searchtune.steps import finetune
record = finetune.finetune(sys.argv[1], sys.argv[2], TrainParams(max_train_rows=int(sys.argv[3]), epochs=1))
print(json.dumps({"module": finetune.__file__, **record.epochs[0].model_dump()}))
"""


def train(source: str, tokenized: str, rows: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": source, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run([sys.executable, "-c", TRAIN, tokenized, out, str(rows)], env=env, capture_output=True,
                              text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["module"].startswith(source), f"{result['module']} is not from {source}"
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", required=True, help="the baseline tree's src/ folder")
    parser.add_argument("--tokenized", required=True, help="a tokenize step output (default max_length 64)")
    parser.add_argument("--rows", type=int, default=384, help="training rows per run (12 steps of 32)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args()
    trees = {"baseline": str(Path(args.baseline_src).resolve()), "new": str(ROOT / "src")}
    raw: dict[str, list[float]] = {"baseline": [], "new": []}
    for round_index in range(args.rounds):
        order = ["baseline", "new"] if round_index % 2 == 0 else ["new", "baseline"]
        for name in order:
            result = train(trees[name], args.tokenized, args.rows, args.threads)
            raw[name].append(result["examples_per_second"])
            print(f"round {round_index + 1}/{args.rounds} {name}: {result['examples_per_second']} examples/s",
                  file=sys.stderr, flush=True)
    ratios = [new / base for new, base in zip(raw["new"], raw["baseline"], strict=True)]
    summary = {
        "command": "python bench/cpu_trainer_ab.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPU cores, {args.threads} thread(s) per run",
        "rows": args.rows, "rounds": args.rounds,
        "examples_per_second": raw, "median": {k: statistics.median(v) for k, v in raw.items()},
        "ratio_new_over_baseline_per_round": [round(r, 3) for r in ratios],
        "median_ratio": round(statistics.median(ratios), 3),
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
