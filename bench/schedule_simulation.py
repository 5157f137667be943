"""Schedule simulation: consecutive tiny runs into ONE registry, as a daily cron job would make them.

Each run is a real ``searchtune run`` (KFP local, subprocess runner) with a tiny budget
(``--max-train-rows 300 --epochs 1``) on its own day's data: a seeded subset of the queries
of the bundled sample (``--query-share`` of them, seed = run number), so consecutive runs see
slightly different logs and the gate decides each on its merits (some register, some are
refused). Every run gets its own ``TMPDIR``, so whatever temporary files a run leaves behind
are its own and are counted.

Reported per run: exit code, verdict and reason, registered version, wall time, registry size
on disk (bytes, files) after the run, aliases, the run output folders' size, and leftovers
(``*.searchtune-tmp`` files, probes, leases, prune locks, hidden ``PRUNING.json`` versions,
claimed numbers without a manifest, files in the run's ``TMPDIR``). At the end: ``models list``,
``models candidates``, the alias history, ``models verify --registry``, then ``models prune
--keep 3`` twice: with its default ``--min-age`` (60 minutes: every version here is younger,
so nothing may go) and with ``--min-age 0``, with the registry's size and ``verify`` after.

Usage: ``OMP_NUM_THREADS=1 python bench/schedule_simulation.py [--runs 10] [--query-share 0.7]
[--out FILE]``; prints a summary line and writes ``bench/results/schedule_simulation.json``
(``--out``; fewer than 10 runs write only with an explicit ``--out``).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "schedule_simulation.json"
MODEL = "searchtune-relevance"
BUDGET = ["--max-train-rows", "300", "--epochs", "1"]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "searchtune.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def tree_size(folder: Path) -> dict:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    return {"bytes": sum(p.stat().st_size for p in files), "files": len(files)}


def aliases(registry: Path) -> dict:
    found = {}
    for path in sorted((registry / MODEL / "aliases").glob("*.json")):
        try:
            record = json.loads(path.read_text())
            found[path.stem] = {"version": record.get("version"), "previous_version": record.get("previous_version")}
        except (OSError, ValueError) as error:
            found[path.stem] = {"unreadable": str(error)}
    return found


def versions(registry: Path) -> list[int]:
    return sorted(int(p.parent.name) for p in (registry / MODEL / "versions").glob("*/MANIFEST.json"))


def leftovers(registry: Path, tmpdir: Path) -> dict:
    """What a finished run should not leave behind (listed by path, relative to the registry)."""
    model = registry / MODEL
    relative = lambda paths: sorted(str(p.relative_to(registry)) for p in paths)  # noqa: E731
    return {
        "searchtune_tmp_files": relative(registry.rglob("*.searchtune-tmp")),
        "probes": relative((registry / "_probes").glob("*")),
        "leases": relative((model / "leases").glob("*")),
        "prune_locks": relative(model.glob("prune-lock*")),
        "pruning_markers": relative(model.glob("versions/*/PRUNING.json")),
        "claims_without_manifest": relative(c.parent for c in model.glob("versions/*/CLAIM")
                                            if not (c.parent / "MANIFEST.json").exists()),
        "files_in_run_tmpdir": sorted(str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*")) if tmpdir.exists() else [],
    }


def outcome(stdout: str) -> dict:
    """Verdict, reason and registered version from the final block ``searchtune run`` prints."""
    verdict = re.search(r"^\s+(BLESSED|NOT BLESSED): (.*)$", stdout, re.M)
    registered = re.search(r"^\s+registry: .* \(version (\d+), (.*)\)$", stdout, re.M)
    return {"verdict": verdict.group(1) if verdict else None, "reason": verdict.group(2) if verdict else None,
            "registered_version": int(registered.group(1)) if registered else None,
            "registration": registered.group(2) if registered else None}


def write_day(number: int, share: float, path: Path) -> dict:
    """Day ``number``'s log: a seeded share of the sample's queries with all their judgements."""
    import numpy as np
    import pandas as pd

    from searchtune.data import sample_data

    sample = pd.read_parquet(sample_data.default_sample_path())
    queries = sample["search_term"].drop_duplicates().to_numpy()
    chosen = np.random.default_rng(number).choice(len(queries), int(round(share * len(queries))), replace=False)
    day = sample[sample["search_term"].isin(set(queries[chosen]))]
    day.to_parquet(path, index=False)
    return {"rows": len(day), "queries": len(chosen)}


def upkeep(registry: Path) -> dict:
    def shown(done: subprocess.CompletedProcess) -> dict:
        return {"exit": done.returncode, "output": (done.stdout + done.stderr).strip().splitlines()}

    ref = f"{registry}/{MODEL}"
    result = {"models_list": shown(cli("models", "list", "--registry", str(registry))),
              "models_candidates": shown(cli("models", "candidates", ref, "--limit", "100")),
              "alias_history": sorted(str(p.relative_to(registry)) for p in (registry / MODEL / "aliases" / "history").rglob("*.json")),
              "verify_before_prune": shown(cli("models", "verify", "--registry", str(registry)))}
    before = {"versions": versions(registry), "size": tree_size(registry), "aliases": aliases(registry)}
    default_age = shown(cli("models", "prune", ref, "--keep", "3"))
    after_default = {"versions": versions(registry), "size": tree_size(registry)}
    no_age = shown(cli("models", "prune", ref, "--keep", "3", "--min-age", "0"))
    after = {"versions": versions(registry), "size": tree_size(registry), "aliases": aliases(registry)}
    result["prune"] = {
        "before": before,
        "keep_3_default_min_age": {"command": "searchtune models prune R/m --keep 3", **default_age, "after": after_default},
        "keep_3_min_age_0": {"command": "searchtune models prune R/m --keep 3 --min-age 0", **no_age, "after": after},
        "bytes_freed": before["size"]["bytes"] - after["size"]["bytes"],
    }
    result["verify_after_prune"] = shown(cli("models", "verify", "--registry", str(registry)))
    result["models_list_after_prune"] = shown(cli("models", "list", "--registry", str(registry)))
    result["leftovers_after_prune"] = leftovers(registry, registry / "_none")
    return result


def summarize(runs: list[dict], final: dict, minutes: float) -> dict:
    return {"runs": len(runs), "blessed": sum(r["verdict"] == "BLESSED" for r in runs),
            "refused": sum(r["verdict"] == "NOT BLESSED" for r in runs),
            "failed": sum(r["exit"] not in (0, 3) for r in runs),
            "registered": sum(r["registered_version"] is not None for r in runs),
            "median_run_seconds": sorted(r["seconds"] for r in runs)[len(runs) // 2],
            "registry_mb_after_last_run": round(final["prune"]["before"]["size"]["bytes"] / 1e6, 2),
            "registry_mb_after_prune": round(final["prune"]["keep_3_min_age_0"]["after"]["size"]["bytes"] / 1e6, 2),
            "verify_exit_before_after_prune": [final["verify_before_prune"]["exit"], final["verify_after_prune"]["exit"]],
            "leftovers_any_run": sorted({kind for r in runs for kind, found in r.get("leftovers", {}).items() if found}),
            "total_minutes": round(minutes, 1)}


def collect(work: Path, log: Path) -> tuple[list[dict], dict]:
    """Rows of a simulation stopped from outside (its parent killed between runs), from its log and folder."""
    import pandas as pd

    runs = []
    for line in log.read_text().splitlines():
        if line.startswith('{"run"'):
            row = json.loads(line)
            tmpdir = work / "tmp" / f"run-{row['run']:02d}"
            row["leftovers"] = {"files_in_run_tmpdir": sorted(str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*"))}
            row["data_rows"] = len(pd.read_parquet(work / f"day-{row['run']:02d}.parquet"))
            runs.append(row)
    return runs, upkeep(work / "registry")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="consecutive runs (default 10)")
    parser.add_argument("--query-share", type=float, default=0.7, help="share of the sample's queries per day (default 0.7)")
    parser.add_argument("--stop-after-minutes", type=float, default=0,
                        help="launch no run after this many minutes (default: no limit); the result says so")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--collect", nargs=2, default=None, metavar=("WORKDIR", "LOG"),
                        help="finish a simulation whose parent was killed between runs: per-run lines from its LOG, "
                        "then the end (list, verify, prune) on WORKDIR/registry")
    args = parser.parse_args()
    command = f"OMP_NUM_THREADS=1 python bench/schedule_simulation.py --runs {args.runs} --query-share {args.query_share:g}"
    started, stopped = time.perf_counter(), None
    if args.collect:
        runs, final = collect(Path(args.collect[0]), Path(args.collect[1]))
        stopped = f"the simulation was stopped from outside after {len(runs)} run(s); collected by --collect"
        command += f"  (stopped; then: python bench/schedule_simulation.py --collect WORKDIR LOG --out {args.out})"
    else:
        if args.runs < 1 or not 0 < args.query_share <= 1:
            sys.exit("--runs must be at least 1 and --query-share in (0, 1]")
        work = Path(tempfile.mkdtemp(prefix="searchtune-bench-schedule-"))
        registry, outputs = work / "registry", work / "runs"
        runs = []
        try:
            for number in range(1, args.runs + 1):
                if args.stop_after_minutes and time.perf_counter() - started > args.stop_after_minutes * 60:
                    stopped = f"no run launched after {args.stop_after_minutes:g} minutes: {len(runs)} of {args.runs} runs"
                    break
                data, tmpdir = work / f"day-{number:02d}.parquet", work / "tmp" / f"run-{number:02d}"
                tmpdir.mkdir(parents=True)
                day = write_day(number, args.query_share, data)
                tick = time.perf_counter()
                done = cli("run", "--data", str(data), *BUDGET, "--registry", str(registry), "--output-dir", str(outputs),
                           env={"TMPDIR": str(tmpdir)})
                row = {"run": number, "data": day, "exit": done.returncode, "seconds": round(time.perf_counter() - tick, 1),
                       **outcome(done.stdout), "versions": versions(registry), "aliases": aliases(registry),
                       "registry_size": tree_size(registry), "run_outputs_size": tree_size(outputs),
                       "leftovers": leftovers(registry, tmpdir)}
                if done.returncode not in (0, 3):
                    row["error_tail"] = (done.stdout + done.stderr).strip().splitlines()[-15:]
                runs.append(row)
                print(json.dumps({k: row[k] for k in ("run", "exit", "seconds", "verdict", "registered_version")}
                                 | {"registry_mb": round(row["registry_size"]["bytes"] / 1e6, 1)}), flush=True)
            final = upkeep(registry)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started + (sum(r["seconds"] for r in runs) if args.collect else 0)
    summary = summarize(runs, final, elapsed / 60)
    result = {"command": command, "budget": " ".join(BUDGET),
              "gate": "defaults (require_beat_base on, max_auc_drop 0.01 vs production)",
              "machine": {"cpus": os.cpu_count(), "load_average_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
                          "note": "2 cores shared with other engineers' jobs"},
              **({"stopped": stopped} if stopped else {}), "summary": summary, "runs": runs, "end": final}
    print(json.dumps(summary))
    if len(runs) >= 10 or args.out != str(DEFAULT_OUT):
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
