"""The register step: store a blessed model as a new registry version and move ``production``.

The version holds what serving and the next run need: the fine-tuned adapter and
tokenizer (everything in the fine-tune output), the evaluation and blessing, a sample of
the training data (the next run's drift reference) and the lineage (data fingerprint,
exact input URIs, parameters, code version, run id).

The blessing was decided against whatever ``production`` pointed at during evaluation.
Another run may have moved the alias since; then the version stays registered but is not
promoted, because the candidate was never compared with the new production model on the
same rows (a recorded AUC from another test split is no comparison).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile

import searchtune
from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry import AliasConflict, ModelRegistry

log = logging.getLogger(__name__)

REFERENCE_SAMPLE_ROWS = 5000
REFERENCE_COLUMNS = ["query", "product_text", "label"]


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

    Memory stays bounded by ``rows`` whatever the size of the split (``splits.sample_parquet``).

    Args:
        train_parquet: the ingest step's ``train.parquet``.
        out_path: where to write the sample (parquet).
        rows: the most rows to keep.

    Returns:
        The number of rows written.
    """
    from searchtune.steps import splits

    frame = splits.sample_parquet(train_parquet, rows, seed=0, columns=REFERENCE_COLUMNS)
    frame.to_parquet(out_path, index=False)
    return len(frame)


def build_lineage(run: records.RunRecord, stats: records.IngestStats, model: records.ModelRecord,
                  evaluation: records.Evaluation, reference_rows: int) -> records.Lineage:
    """Where a version came from, assembled from the upstream steps' records."""
    return records.Lineage(
        run_id=run.run_id,
        created_at=records.now(),
        parameters=run.parameters,
        data={"fingerprint": stats.fingerprint, "sources": stats.sources, "data_version": run.data_version,
              "files": [f.model_dump() for f in run.data_files], "splits": {k: v.model_dump() for k, v in stats.splits.items()}},
        base_model=model.base_model,
        warm_start=model.warm_start,
        blessing=evaluation.blessing,
        reference_sample_rows=reference_rows,
        code=code_version(),
    )


def _stage_version(staging: str, model_dir: str, splits_dir: str, evaluation_dir: str, run: records.RunRecord,
                   index_dir: str = "") -> records.Lineage:
    """Fill ``staging`` with the version's files; return the lineage record."""
    if not os.path.isdir(model_dir):
        raise SearchtuneError(f"{model_dir}: model folder missing")
    model = records.ModelRecord.read(model_dir)
    shutil.copytree(model_dir, staging, dirs_exist_ok=True)
    if index_dir:
        records.IndexRecord.read(index_dir)  # an index step's output, or one clear error
        shutil.copytree(index_dir, os.path.join(staging, records.INDEX_DIR))
    evaluation = records.Evaluation.read(evaluation_dir)
    for record in (evaluation, evaluation.blessing):
        if os.path.exists(record.path(staging)):
            raise SearchtuneError(f"{model_dir}: contains {record.FILE}, which the evaluation step provides")
        record.write(staging)
    # What a reviewer of the version reads: the model card and the evaluation report (evaluation
    # folders written before searchtune had them lack them, and register without them).
    for page in (records.MODEL_CARD_FILE, records.REPORT_FILE):
        if os.path.exists(os.path.join(evaluation_dir, page)):
            shutil.copyfile(os.path.join(evaluation_dir, page), os.path.join(staging, page))
    rows = write_reference_sample(os.path.join(splits_dir, records.split_file("train")),
                                  os.path.join(staging, records.REFERENCE_SAMPLE_FILE))
    lineage = build_lineage(run, records.IngestStats.read(splits_dir), model, evaluation, rows)
    lineage.write(staging)
    log.info("staged version: model files from %s, %d reference rows, lineage with %d source(s)",
             model_dir, rows, len(lineage.data["sources"]))
    return lineage


def _promote(registry: ModelRegistry, model_name: str, version: int, blessing: records.Blessing, run_id: str,
             actor: str) -> tuple[bool, str, int | None, int | None]:
    """Move production to ``version`` by compare-and-swap from the version it was evaluated against.

    A candidate is never promoted on a comparison with a model it was not evaluated
    against: if production moved since the evaluation, the version stays registered but
    is not promoted, and the reason says which run to start.

    Returns:
        (promoted, reason, alias_before, alias_after).
    """
    expected = blessing.production_version
    try:
        registry.move_alias(model_name, version, expected=expected, actor=actor, run_id=run_id, reason=blessing.reason)
        return True, blessing.reason, expected, version
    except AliasConflict as conflict:
        now = None if conflict.current is None else int(conflict.current["version"])
        if now == version:  # a retried task of ours already made this very version production
            return True, f"production already points at v{version}", now, now
        reason = (f"registered v{version} but did not promote it: production moved to {_v(now)} after evaluation, "
                  f"and the candidate was evaluated against {_v(expected)} only; run the pipeline again to compare it "
                  f"with {_v(now)}")
        return False, reason, now, now


def register_model(registry_root: str, model_name: str, model_dir: str, splits_dir: str, evaluation_dir: str,
                   run_dir: str, index_dir: str = "", actor: str = "searchtune-pipeline") -> records.Registration:
    """Register a blessed model as a new version and make it production if production has not moved.

    Args:
        registry_root: the registry's root (local folder or ``gs://bucket/prefix``).
        model_name: the registered model's name.
        model_dir: the fine-tune output (``adapter/``, ``tokenizer/``, ``searchtune_model.json``);
            everything in it is stored.
        splits_dir: the ingest output (``train.parquet`` ..., ``stats.json``).
        evaluation_dir: the evaluate output (``evaluation.json``, ``blessing.json``).
        run_dir: the preflight output (``run.json``: run id, every parameter, the input files).
        index_dir: the index step output, stored as the version's ``index/`` ('' = none).
        actor: who registers (recorded as ``created_by`` and ``moved_by``).

    Returns:
        The registration record.

    Raises:
        SearchtuneError: the blessing says the model is not blessed, or an input is missing.
    """
    blessing = records.Blessing.read(evaluation_dir)
    if not blessing.blessed:
        raise SearchtuneError(f"refusing to register: the model is not blessed ({blessing.reason})")
    run = records.RunRecord.read(run_dir)
    registry = ModelRegistry(registry_root)
    # A retried register task (KFP retry policy, preempted pod) finds its own version
    # instead of adding a second copy of the same model.
    manifest = next((m for m in registry.versions(model_name) if run.run_id and m.get("run_id") == run.run_id), None)
    if manifest is not None:
        log.info("run %s already registered %s v%d; reusing it", run.run_id, model_name, manifest["version"])
    else:
        manifest = _register_new_version(registry, model_name, model_dir, splits_dir, evaluation_dir, run, actor, blessing,
                                         index_dir)
    version = manifest["version"]
    promoted, reason, before, after = _promote(registry, model_name, version, blessing, run.run_id, actor)
    outcome = records.Registration(model=model_name, version=version, promoted=promoted, reason=reason,
                                   alias_before=before, alias_after=after, registry_uri=manifest["uri"])
    if promoted:
        log.info("registered %s v%d at %s and moved production %s -> v%d", model_name, version,
                 manifest["uri"], _v(before), version)
    else:
        log.warning("%s (%s)", reason, manifest["uri"])
    stored_report = os.path.exists(os.path.join(evaluation_dir, records.REPORT_FILE))
    report = storage.join(manifest["uri"], records.REPORT_FILE) if stored_report else ""
    registry.record_candidate(model_name, candidate_record(blessing, run.run_id, outcome, report=report))
    return outcome


def candidate_record(blessing: records.Blessing, run_id: str, registration: records.Registration | None = None,
                     report: str = "") -> dict:
    """What the registry's candidates log keeps of one evaluated candidate (``searchtune models candidates``).

    ``report`` is where the evaluation report can be opened ('' = not known); the notify step
    sends it with the verdict.
    """
    estimate = blessing.gate_estimate()
    entry = {
        "run_id": run_id, "blessed": blessing.blessed, "decided_by": blessing.decided_by,
        "reason": registration.reason if registration and not registration.promoted else blessing.reason,
        "gate_metric": blessing.rule.gate_metric, "value": None if estimate is None else estimate.value,
        "low": None if estimate is None else estimate.low, "high": None if estimate is None else estimate.high,
        "production_version": blessing.production_version,
    }
    if registration is not None:
        entry.update(version=registration.version, promoted=registration.promoted)
    if report:
        entry["report"] = report
    return entry


def record_refusal(registry_root: str, model_name: str, evaluation_dir: str, run_dir: str, report_uri: str = "") -> dict:
    """Log a candidate the gate refused in the registry's candidates log; nothing else changes.

    Args:
        registry_root: the registry's root.
        model_name: the registered model's name.
        evaluation_dir: the evaluate output (``blessing.json``).
        run_dir: the preflight output (``run.json``).
        report_uri: where the evaluation report of the refused candidate can be opened (the
            evaluate output's ``report.html`` as a URI); '' = not recorded.

    Returns:
        The stored candidate record.

    Raises:
        SearchtuneError: the blessing says the candidate was blessed (then register it instead).
    """
    blessing = records.Blessing.read(evaluation_dir)
    if blessing.blessed:
        raise SearchtuneError("the candidate was blessed: the register step records it, not this one")
    run = records.RunRecord.read(run_dir)
    entry = ModelRegistry(registry_root).record_candidate(model_name, candidate_record(blessing, run.run_id, report=report_uri))
    log.info("recorded refused candidate of run %s in %s: %s", run.run_id, entry["uri"], blessing.reason)
    return entry


def _register_new_version(registry: ModelRegistry, model_name: str, model_dir: str, splits_dir: str, evaluation_dir: str,
                          run: records.RunRecord, actor: str, blessing: records.Blessing, index_dir: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="searchtune-register-") as staging:
        lineage = _stage_version(staging, model_dir, splits_dir, evaluation_dir, run, index_dir)
        manifest = registry.register_version(model_name, staging, {
            "run_id": run.run_id,
            "created_by": actor,
            **gate_metadata(blessing),
            "blessed": True,
            "blessing_reason": blessing.reason,
            "data_fingerprint": lineage.data["fingerprint"],
            "code": lineage.code,
        })
    return manifest


def gate_metadata(blessing: records.Blessing) -> dict:
    """The candidate's gate metric and interval, kept in the manifest for listings."""
    estimate = blessing.gate_estimate()
    return {"gate_metric": blessing.rule.gate_metric, "auc": None if estimate is None else estimate.value,
            "auc_low": None if estimate is None else estimate.low, "auc_high": None if estimate is None else estimate.high}


def _v(version: int | None) -> str:
    return "nothing" if version is None else f"v{version}"
