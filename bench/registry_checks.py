"""What the registry's checks cost: check_writable (pipeline pre-flight), the cheap per-version
check of ``models list`` (version_health) and the full ``verify`` (every byte hashed).

Runs against a local folder and the GCS emulator of the tests (in-memory, loopback: it
shows the work searchtune does, not GCS network latency). Rounds alternate between the
back ends; medians are reported. Usage:

    OMP_NUM_THREADS=1 python bench/registry_checks.py [--versions 8] [--megabytes 5] [--rounds 5]
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from searchtune.registry import ModelRegistry

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench-model"


def start_emulator():
    spec = importlib.util.spec_from_file_location("gcs_emulator", ROOT / "tests" / "gcs_emulator.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    emulator = module.Emulator().start()
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.endpoint
    return emulator


def model_folder(folder: Path, megabytes: int, tag: int) -> str:
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(megabytes * 1024 * 1024))
    for name in ("adapter/adapter_config.json", "searchtune_model.json", "evaluation.json", "blessing.json"):
        (folder / name).write_text(json.dumps({"tag": tag}))
    return str(folder)


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=8)
    parser.add_argument("--megabytes", type=int, default=5, help="size of each version's weights file")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    emulator = start_emulator()
    try:
        with tempfile.TemporaryDirectory() as temp:
            bucket = emulator.new_bucket()
            registries = {"local": ModelRegistry(os.path.join(temp, "registry")),
                          "gcs-emulator": ModelRegistry(f"gs://{bucket}/registry")}
            for index in range(args.versions):
                folder = model_folder(Path(temp) / f"v{index}", args.megabytes, index)
                for registry in registries.values():
                    registry.register_version(MODEL, folder, {"run_id": f"run-{index}"})
            timings = {name: {"check_writable": [], "version_health": [], "verify": []} for name in registries}
            for _ in range(args.rounds):
                for name, registry in registries.items():
                    timings[name]["check_writable"].append(timed(lambda r=registry: r.check_writable(MODEL)))
                    timings[name]["version_health"].append(timed(lambda r=registry: r.version_health(MODEL)))
                    timings[name]["verify"].append(timed(lambda r=registry: r.verify(MODEL)))
            hashed_mb = args.versions * (args.megabytes * 1024 * 1024) / 1e6
            results = {
                name: {
                    "check_writable_ms": round(1000 * statistics.median(t["check_writable"]), 1),
                    "version_health_ms": round(1000 * statistics.median(t["version_health"]), 1),
                    "verify_s": round(statistics.median(t["verify"]), 3),
                    "verify_mb_per_s": round(hashed_mb / statistics.median(t["verify"]), 1),
                }
                for name, t in timings.items()
            }
    finally:
        emulator.stop()
    print(json.dumps({
        "command": " ".join(["OMP_NUM_THREADS=1 python bench/registry_checks.py", *sys.argv[1:]]),
        "setup": f"{args.versions} versions of 5 files, weights {args.megabytes} MB each; median of {args.rounds} "
                 "alternating rounds; 2-core machine shared with other work",
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
