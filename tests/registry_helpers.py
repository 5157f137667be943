"""Helpers shared by the registry tests: model-like folders, snapshots, racing child processes."""

import json
import os
import subprocess
import sys
import textwrap
import time

from searchtune.io import storage
from searchtune.registry import ModelRegistry

MODEL = "relevance"


def seed_registry(tmp_path, model: str = "searchtune-relevance"):
    """A registry (``tmp_path/registry``) holding one version of ``model``, 1,000 bytes of weights, as production."""
    root = tmp_path / "registry"
    files = tmp_path / "model"
    (files / "adapter").mkdir(parents=True)
    (files / "adapter" / "weights.bin").write_bytes(b"\x01" * 1000)
    registry = ModelRegistry(str(root))
    registry.register_version(model, str(files), {"run_id": "seed"})
    registry.move_alias(model, 1, expected=None, actor="test", reason="seed")
    return root


def make_version_files(folder, tag: str, big_bytes: int = 0) -> str:
    """A model-like folder: adapter, tokenizer, config; optionally a big file sorted last."""
    files = {
        "adapter/adapter_config.json": json.dumps({"r": 4, "tag": tag}),
        "adapter/adapter_model.safetensors": tag * 500,
        "tokenizer/vocab.txt": "\n".join(["[PAD]", "[UNK]", tag]),
        "searchtune_model.json": json.dumps({"architecture": "bi-encoder", "tag": tag}),
        "notes.json": json.dumps({"tag": tag}),
    }
    for name, text in files.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)
    if big_bytes:
        with open(os.path.join(folder, "zz_big.bin"), "wb") as handle:
            handle.write(os.urandom(big_bytes))
    return str(folder)


def register(registry: ModelRegistry, tmp_path, tag: str, auc: float = 0.8) -> dict:
    folder = make_version_files(tmp_path / f"files-{tag}", tag)
    return registry.register_version(MODEL, folder, {"run_id": f"run-{tag}", "created_by": "test", "auc": auc,
                                                     "blessed": True})


def snapshot(root: str) -> dict:
    """Every object/file below the root with its bytes: 'nothing changed' means equal snapshots."""
    return {storage.relative(uri, root): storage.read_bytes(uri) for uri in storage.list_prefix(root)}


def run_children(script: str, args_per_child: list[list[str]], tmp_path, timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Start one Python child per args list, release them together, return their results.

    Each child signals readiness by creating ``ready-<i>`` and then waits for ``go``, so the
    interesting part of every child starts at (nearly) the same moment.
    """
    prelude = textwrap.dedent("""
        import os, sys, time
        ready, go = sys.argv[1], sys.argv[2]
        open(ready, "w").close()
        while not os.path.exists(go):
            time.sleep(0.001)
    """)
    go = tmp_path / "go"
    processes = []
    for index, args in enumerate(args_per_child):
        ready = tmp_path / f"ready-{index}"
        processes.append((ready, subprocess.Popen(
            [sys.executable, "-c", prelude + textwrap.dedent(script), str(ready), str(go), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    deadline = time.monotonic() + 60
    while not all(ready.exists() for ready, _ in processes):
        assert time.monotonic() < deadline, "children did not start"
        time.sleep(0.01)
    go.touch()
    results = []
    for _, process in processes:
        out, err = process.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results
