"""The register step: store a blessed model as a new registry version and move ``production``.

The version holds what serving and the next run need: the fine-tuned adapter and
tokenizer (everything in the fine-tune output), the evaluation and blessing, a sample of
the training data (the next run's drift reference) and the lineage (data fingerprint,
exact input URIs, parameters, code version, run id).

The blessing was decided against whatever ``production`` pointed at during evaluation.
Another run may have moved the alias since; then the same gate is applied again against
the new production model before the alias is moved, and if the candidate no longer
passes, the version stays registered but is not promoted.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import subprocess
import tempfile

import searchtune
from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry import PRODUCTION, AliasConflict, ModelRegistry
from searchtune.steps import blessing as gate

log = logging.getLogger(__name__)

REFERENCE_SAMPLE_ROWS = 5000
REFERENCE_COLUMNS = ["query", "product_text", "label"]
_MAX_ALIAS_ATTEMPTS = 10


def _read_json(path: str) -> dict:
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise SearchtuneError(f"{path}: missing") from None
    except json.JSONDecodeError as error:
        raise SearchtuneError(f"{path}: not valid JSON ({error})") from None


def code_version() -> dict:
    """searchtune's version and, when known, the git commit it was built from.

    Images set ``SEARCHTUNE_GIT_COMMIT`` at build time; in a checkout, ``git`` is asked.
    """
    commit = os.environ.get("SEARCHTUNE_GIT_COMMIT") or None
    if commit is None:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(searchtune.__file__)),
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"searchtune": searchtune.__version__, "git_commit": commit}


def write_reference_sample(train_parquet: str, out_path: str, rows: int = REFERENCE_SAMPLE_ROWS) -> int:
    """Write a deterministic sample of at most ``rows`` training rows (query, product_text, label).

    Args:
        train_parquet: the ingest step's ``train.parquet``.
        out_path: where to write the sample (parquet).
        rows: the most rows to keep.

    Returns:
        The number of rows written.
    """
    import pandas as pd

    try:
        frame = pd.read_parquet(train_parquet)
    except FileNotFoundError:
        raise SearchtuneError(f"{train_parquet}: missing") from None
    missing = [c for c in REFERENCE_COLUMNS if c not in frame.columns]
    if missing:
        raise SearchtuneError(f"{train_parquet}: missing column(s) {', '.join(missing)}")
    frame = frame[REFERENCE_COLUMNS]
    if len(frame) > rows:
        frame = frame.sample(n=rows, random_state=0).sort_index()  # fixed seed: same input, same sample
    frame.reset_index(drop=True).to_parquet(out_path, index=False)
    return len(frame)


def _stage_version(staging: str, model_dir: str, splits_dir: str, evaluation_dir: str, run_id: str,
                   parameters: dict) -> dict:
    """Fill ``staging`` with the version's files; return the lineage record."""
    if not os.path.isdir(model_dir):
        raise SearchtuneError(f"{model_dir}: model folder missing")
    shutil.copytree(model_dir, staging, dirs_exist_ok=True)
    for name in ("evaluation.json", "blessing.json"):
        source = os.path.join(evaluation_dir, name)
        if not os.path.isfile(source):
            raise SearchtuneError(f"{source}: missing")
        if os.path.exists(os.path.join(staging, name)):
            raise SearchtuneError(f"{model_dir}: contains {name}, which the evaluation step provides")
        shutil.copyfile(source, os.path.join(staging, name))
    rows = write_reference_sample(os.path.join(splits_dir, "train.parquet"),
                                  os.path.join(staging, "reference_sample.parquet"))
    stats = _read_json(os.path.join(splits_dir, "stats.json"))
    lineage = {
        "run_id": run_id,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {
            "fingerprint": stats.get("fingerprint"),
            "sources": stats.get("sources", []),
            "splits": stats.get("splits"),
        },
        "reference_sample_rows": rows,
        "parameters": parameters,
        "code": code_version(),
    }
    with open(os.path.join(staging, "lineage.json"), "w") as handle:
        json.dump(lineage, handle, indent=2, sort_keys=True)
    log.info("staged version: model files from %s, %d reference rows, lineage with %d source(s)",
             model_dir, rows, len(lineage["data"]["sources"]))
    return lineage


def _promote(registry: ModelRegistry, model_name: str, version: int, blessing: dict, run_id: str,
             actor: str) -> tuple[bool, str, int | None, int | None]:
    """Move production to ``version`` by compare-and-swap, re-gating if it moved since evaluation.

    Returns:
        (promoted, reason, alias_before, alias_after).
    """
    champion = blessing.get("champion")
    expected = None if not champion else int(champion["version"])
    decision = blessing
    for _ in range(_MAX_ALIAS_ATTEMPTS):
        try:
            registry.move_alias(model_name, version, expected=expected, actor=actor, run_id=run_id,
                                reason=decision["reason"])
            return True, decision["reason"], expected, version
        except AliasConflict as conflict:
            now = None if conflict.current is None else int(conflict.current["version"])
            if now == version:  # someone already made this very version production
                return True, f"production already points at v{version}", now, now
            log.warning("production moved since evaluation (expected %s, now %s); re-checking the gate",
                        _v(expected), _v(now))
            production = registry.production(model_name) if now is not None else None
            new_champion = None if production is None else {"version": production["version"], "auc": production["auc"]}
            decision = gate.decide(blessing["candidate"]["auc"], blessing["min_auc"], blessing["max_auc_drop"],
                                   new_champion, candidate_id=run_id)
            if not decision["blessed"]:
                reason = (f"registered v{version} but did not promote it: production moved to {_v(now)} "
                          f"after evaluation and {decision['reason']}")
                return False, reason, now, now
            expected = now
    now_record = registry.alias(model_name, PRODUCTION)
    now = None if now_record is None else int(now_record["version"])
    return False, f"registered v{version} but did not promote it: production kept moving ({_MAX_ALIAS_ATTEMPTS} tries)", now, now


def register_model(registry_root: str, model_name: str, model_dir: str, splits_dir: str, evaluation_dir: str,
                   run_id: str, parameters: dict, actor: str = "searchtune-pipeline") -> dict:
    """Register a blessed model as a new version and make it production if it still passes the gate.

    Args:
        registry_root: the registry's root (local folder or ``gs://bucket/prefix``).
        model_name: the registered model's name.
        model_dir: the fine-tune output (``adapter/``, ``tokenizer/``, ``searchtune_model.json``,
            ``training_metrics.json``); everything in it is stored.
        splits_dir: the ingest output (``train.parquet`` ..., ``stats.json``).
        evaluation_dir: the evaluate output (``evaluation.json``, ``blessing.json``).
        run_id: the pipeline run's id, recorded in the manifest, lineage and alias history.
        parameters: the run's parameters, recorded in the lineage.
        actor: who registers (recorded as ``created_by`` and ``moved_by``).

    Returns:
        ``{version, promoted, reason, alias_before, alias_after, registry_uri, model}``.

    Raises:
        SearchtuneError: the blessing says the model is not blessed, or an input is missing.
    """
    blessing = _read_json(os.path.join(evaluation_dir, "blessing.json"))
    if not blessing.get("blessed"):
        raise SearchtuneError(f"refusing to register: the model is not blessed ({blessing.get('reason', 'no reason given')})")
    for key in ("candidate", "min_auc", "max_auc_drop"):
        if key not in blessing:
            raise SearchtuneError(f"{os.path.join(evaluation_dir, 'blessing.json')}: missing '{key}'")
    registry = ModelRegistry(registry_root)
    # A retried register task (KFP retry policy, preempted pod) finds its own version
    # instead of adding a second copy of the same model.
    manifest = next((m for m in registry.versions(model_name) if run_id and m.get("run_id") == run_id), None)
    if manifest is not None:
        log.info("run %s already registered %s v%d; reusing it", run_id, model_name, manifest["version"])
    else:
        manifest = _register_new_version(registry, model_name, model_dir, splits_dir, evaluation_dir, run_id,
                                         parameters, actor, blessing)
    version = manifest["version"]
    promoted, reason, before, after = _promote(registry, model_name, version, blessing, run_id, actor)
    outcome = {
        "model": model_name,
        "version": version,
        "promoted": promoted,
        "reason": reason,
        "alias_before": before,
        "alias_after": after,
        "registry_uri": manifest["uri"],
    }
    if promoted:
        log.info("registered %s v%d at %s and moved production %s -> v%d", model_name, version,
                 manifest["uri"], _v(before), version)
    else:
        log.warning("%s (%s)", reason, manifest["uri"])
    return outcome


def _register_new_version(registry: ModelRegistry, model_name: str, model_dir: str, splits_dir: str,
                          evaluation_dir: str, run_id: str, parameters: dict, actor: str, blessing: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="searchtune-register-") as staging:
        lineage = _stage_version(staging, model_dir, splits_dir, evaluation_dir, run_id, parameters)
        manifest = registry.register_version(model_name, staging, {
            "run_id": run_id,
            "created_by": actor,
            "auc": blessing["candidate"]["auc"],
            "blessed": True,
            "blessing_reason": blessing.get("reason", ""),
            "data_fingerprint": lineage["data"]["fingerprint"],
            "code": lineage["code"],
        })
    return manifest


def _v(version: int | None) -> str:
    return "nothing" if version is None else f"v{version}"


def write_outcome(outcome: dict, path: str) -> None:
    """Save the outcome as JSON (used by the KFP component for its output artifact)."""
    storage.write_bytes(path, (json.dumps(outcome, indent=2, sort_keys=True) + "\n").encode())
