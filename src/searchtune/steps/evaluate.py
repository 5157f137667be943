"""Evaluate step: score the candidate, the untuned base and the champion on the same
test rows, write the drift report and the reviewer's summary, and decide the blessing.

Everything lands in one output directory: ``evaluation.json`` (all metrics),
``blessing.json`` (the gate's verdict, see ``searchtune.blessing``), ``summary.md``,
``drift_report.html`` / ``drift_report.json``, ``roc_curve.json`` and
``confusion_matrix.json`` (what the KFP component logs as ClassificationMetrics).
"""

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from searchtune.errors import SearchtuneError
from searchtune.ml import modeling
from searchtune.ml.metrics import ranking_metrics, roc_points
from searchtune.ml.scoring import score_frame, score_untuned_base
from searchtune.steps import blessing, drift, ingest

log = logging.getLogger(__name__)


def find_champion(registry_root: str, model_name: str) -> dict | None:
    """The production model's manifest, or None when the registry has none yet."""
    if not registry_root:
        return None
    from searchtune.registry import ModelRegistry

    return ModelRegistry(registry_root).production(model_name)


def evaluate(
    splits_dir: str,
    model_dir: str,
    output_dir: str,
    registry_root: str = "",
    model_name: str = "",
    min_auc: float = 0.7,
    max_auc_drop: float = 0.0,
    run_id: str = "",
) -> dict:
    """Run the evaluate step and return the blessing.

    Args:
        splits_dir: output of the ingest step (test rows, train rows for the drift reference).
        model_dir: output of the fine-tune step (the candidate).
        output_dir: local directory for every evaluation file.
        registry_root: registry holding the champion ('' = no registry, no champion).
        model_name: the model's name in the registry.
        min_auc: the gate's absolute AUC floor.
        max_auc_drop: how far below the champion's AUC the candidate may land.
        run_id: the pipeline run, recorded in the blessing.

    Returns:
        The blessing record (also in ``blessing.json``).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    test = ingest.read_split(splits_dir, "test")
    validation = ingest.read_split(splits_dir, "validation")
    model, tokenizer, config = modeling.load_trained_model(model_dir)
    max_length = config["max_length"]
    log.info("scoring %d test rows (%d queries) with the candidate", len(test), test["query_group"].nunique())
    candidate_scores = score_frame(model, tokenizer, config["architecture"], max_length, test)
    results = {"test_rows": len(test), "candidate": ranking_metrics(test, candidate_scores)}
    log.info("candidate: %s", results["candidate"])

    results["untuned_base"] = ranking_metrics(test, score_untuned_base(modeling.base_model_of(config), max_length, test, validation))
    log.info("untuned base (cosine): %s", results["untuned_base"])

    champion, champion_error, reference, reference_name = None, None, None, "this run's train split"
    try:
        champion = find_champion(registry_root, model_name)
        if champion is not None:
            with tempfile.TemporaryDirectory() as tmp:
                from searchtune.registry import ModelRegistry

                local = ModelRegistry(registry_root).fetch(model_name, champion["version"], tmp)
                champ_model, champ_tokenizer, champ_config = modeling.load_trained_model(local)
                champ_scores = score_frame(champ_model, champ_tokenizer, champ_config["architecture"], champ_config["max_length"], test)
                results["champion"] = {"version": champion["version"], **ranking_metrics(test, champ_scores)}
                reference_file = Path(local) / "reference_sample.parquet"
                if reference_file.exists():
                    reference, reference_name = pd.read_parquet(reference_file), f"production v{champion['version']}'s training data"
            log.info("champion v%s on the same rows: %s", champion["version"], results["champion"])
    except SearchtuneError as error:
        champion_error = str(error)
    except Exception as error:  # noqa: BLE001 - any failure to judge the champion must fail closed, and say why
        champion_error = f"{type(error).__name__}: {error}"
    if champion_error:
        log.error("could not evaluate the production model: %s", champion_error)

    # With a champion: has the training data moved since the champion's? Without one: how
    # far is the held-out test data from what this model trained on (query text differs by
    # construction there, since splits are by query).
    if reference is None:
        reference, current, current_name = ingest.read_split(splits_dir, "train"), test, "this run's test split"
    else:
        current, current_name = ingest.read_split(splits_dir, "train"), "this run's train split"
    results["drift"] = {"reference": reference_name, "current": current_name,
                        **drift.drift_report(reference, current, out / "drift_report.html", out / "drift_report.json")}

    champion_for_gate = None
    if champion is not None:
        # Compare on the same rows when the champion could be scored; else its recorded AUC.
        champion_auc = results.get("champion", {}).get("roc_auc", champion.get("auc"))
        champion_for_gate = {"version": champion["version"], "auc": champion_auc}
    verdict = blessing.decide(results["candidate"]["roc_auc"], min_auc, max_auc_drop, champion_for_gate, candidate_id=run_id)
    if champion_error:
        verdict.update(blessed=False, reason=f"the production model could not be evaluated ({champion_error}); failing closed")
    results["blessing"] = verdict
    log.info("blessing: %s - %s", "BLESSED" if verdict["blessed"] else "NOT BLESSED", verdict["reason"])

    probabilities = 1.0 / (1.0 + np.exp(-candidate_scores.astype(np.float64)))
    labels = test["label"].to_numpy()
    (out / "roc_curve.json").write_text(json.dumps(roc_points(labels, probabilities)))
    matrix = confusion_matrix(labels, (probabilities >= 0.5).astype(int), labels=[0, 1])
    (out / "confusion_matrix.json").write_text(json.dumps({"categories": ["not relevant", "relevant"], "matrix": matrix.tolist()}))
    results["model"] = {k: config[k] for k in ("architecture", "base_model", "lora", "best_epoch", "best_validation_auc", "epochs", "training_seconds")}
    (out / "evaluation.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "blessing.json").write_text(json.dumps(verdict, indent=2))
    (out / "summary.md").write_text(render_summary(results, splits_dir))
    log.info("wrote evaluation, blessing, summary and drift report to %s", out)
    return verdict


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def render_summary(results: dict, splits_dir: str) -> str:
    """The Markdown page a reviewer reads first."""
    verdict = results["blessing"]
    stats = json.loads((Path(splits_dir) / "stats.json").read_text())
    lines = [
        "# searchtune evaluation",
        "",
        f"**{'BLESSED' if verdict['blessed'] else 'NOT BLESSED'}**: {verdict['reason']}",
        "",
        f"Test split: {results['test_rows']} rows, {stats['splits']['test']['queries']} queries "
        f"(positive rate {stats['splits']['test']['positive_rate']:.3f}); queries never appear in two splits.",
        "",
        "| model | ROC AUC | PR AUC | log loss | nDCG@10 |",
        "|---|---|---|---|---|",
    ]
    rows = [("candidate", results["candidate"]), ("untuned base (cosine)", results["untuned_base"])]
    if "champion" in results:
        rows.append((f"production v{results['champion']['version']}", results["champion"]))
    for name, m in rows:
        lines.append(f"| {name} | {_fmt(m['roc_auc'])} | {_fmt(m['pr_auc'])} | {_fmt(m['log_loss'])} | {_fmt(m['ndcg_at_10'])} |")
    model = results["model"]
    d = results["drift"]
    lines += [
        "",
        f"Gate: min_auc {verdict['min_auc']:.4f}, max_auc_drop {verdict['max_auc_drop']:.4f}"
        + (f", compared with production v{verdict['champion']['version']}" if verdict["champion"] else ", no production model yet") + ".",
        "",
        "## Model",
        f"- {model['architecture']} on `{model['base_model']['name_or_path']}` (sha256 {str(model['base_model'].get('sha256'))[:12]}), "
        f"LoRA r={model['lora']['r']}; best epoch {model['best_epoch']} (validation AUC {_fmt(model['best_validation_auc'])}), "
        f"{model['training_seconds']} s of training",
        "",
        "## Data",
        f"- read {stats['rows_read']} rows from {len(stats['sources'])} file(s); rejected {stats['rows_rejected']}, "
        f"duplicates dropped {stats['duplicates_dropped']}; fingerprint `{stats['fingerprint'][:16]}`",
        *[f"- {split}: {s['rows']} rows, {s['queries']} queries, positive rate {s['positive_rate']:.3f}" for split, s in stats["splits"].items()],
        "",
        "## Drift",
        f"- reference: {d['reference']}; current: {d['current']}; {len(d['drifted_columns'])} of {d['columns']} columns drifted"
        + (f": {', '.join(d['drifted_columns'])}" if d["drifted_columns"] else ""),
        *(["- Without a champion this compares train and test, whose queries differ by construction (splits are by query)."]
          if d["current"] == "this run's test split" else []),
        "- Full report: `drift_report.html`.",
        "",
    ]
    return "\n".join(lines)
