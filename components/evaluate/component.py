"""KFP component for the evaluate step; the logic is ``searchtune.evaluate.evaluate``."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from searchtune.orchestration.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate(
    splits: Input[Dataset],
    model: Input[Model],
    registry_root: str,
    model_name: str,
    min_auc: float,
    max_auc_drop: float,
    run_id: str,
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    drift_report: Output[HTML],
    drift_json: Output[Artifact],
    summary: Output[Markdown],
    evaluation: Output[Artifact],
) -> bool:
    """Score candidate, untuned base and champion on the test split; decide the blessing.

    Args:
        splits: output of the ingest step.
        model: output of the fine-tune step (the candidate).
        registry_root: registry holding the production model ('' = none).
        model_name: the model's name in the registry.
        min_auc: blessed only if the candidate's test ROC AUC is at least this.
        max_auc_drop: and at least the production model's AUC minus this.
        run_id: the pipeline run, recorded in the blessing.
        metrics: ROC AUC, PR AUC, log loss, nDCG@10 of every model scored.
        classification: the candidate's ROC curve and confusion matrix.
        drift_report: Evidently data-drift report (HTML).
        drift_json: the same report as JSON.
        summary: the Markdown page a reviewer reads first.
        evaluation: evaluation.json and blessing.json, read by the register step.

    Returns:
        Whether the candidate is blessed. A single return value on purpose: kfp.local
        resolves a condition on ``task.output`` but not on a NamedTuple field.
    """
    import json
    import os
    import shutil

    from searchtune import logs
    from searchtune.steps import evaluate as step

    with logs.component_step("evaluate"):
        verdict = step.evaluate(splits.path, model.path, evaluation.path, registry_root, model_name, min_auc, max_auc_drop, run_id)
        results = json.loads(open(os.path.join(evaluation.path, "evaluation.json")).read())
        for model_key, prefix in (("candidate", ""), ("untuned_base", "base_"), ("champion", "champion_")):
            for name, value in results.get(model_key, {}).items():
                if name in ("roc_auc", "pr_auc", "log_loss", "ndcg_at_10") and value is not None:
                    metrics.log_metric(prefix + name, value)
        metrics.log_metric("blessed", float(verdict["blessed"]))
        roc = json.loads(open(os.path.join(evaluation.path, "roc_curve.json")).read())
        classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
        confusion = json.loads(open(os.path.join(evaluation.path, "confusion_matrix.json")).read())
        classification.log_confusion_matrix(confusion["categories"], confusion["matrix"])
        shutil.copyfile(os.path.join(evaluation.path, "drift_report.html"), drift_report.path)
        shutil.copyfile(os.path.join(evaluation.path, "drift_report.json"), drift_json.path)
        shutil.copyfile(os.path.join(evaluation.path, "summary.md"), summary.path)
        evaluation.metadata.update({"blessed": verdict["blessed"], "reason": verdict["reason"]})
        return bool(verdict["blessed"])
