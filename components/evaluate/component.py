"""KFP component for the evaluate step; the logic is ``searchtune.steps.evaluate.evaluate``."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from searchtune.orchestration.images import CPU_IMAGE
from searchtune.params import GateParams, documented


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
@documented(
    "Score candidate, untuned base, lexical baseline and production model on the test split; decide the blessing.",
    GateParams,
    splits="output of the ingest step.",
    model="output of the fine-tune step (the candidate).",
    champion="output of the champion step (the production model, if any).",
    run_id="the pipeline run, recorded in the blessing.",
    metrics="every metric of every model with its interval bounds (<model>_<metric>, _low, _high), the random "
            "floors, the candidate's paired differences, and blessed.",
    classification="the candidate's ROC curve and confusion matrix.",
    drift_report="Evidently data-drift report (HTML).",
    drift_json="the same report as JSON.",
    summary="the Markdown page a reviewer reads first.",
    evaluation="evaluation.json and blessing.json, read by the register step.",
    returns="Whether the candidate is blessed. A single return value on purpose: kfp.local resolves a "
            "condition on task.output but not on a NamedTuple field.",
)
def evaluate(
    splits: Input[Dataset],
    model: Input[Model],
    champion: Input[Model],
    gate_metric: str,
    min_auc: float,
    require_beat_base: bool,
    require_beat_lexical: bool,
    max_auc_drop: float,
    require_improvement: bool,
    min_auc_gain: float,
    confidence: float,
    min_test_queries: int,
    bootstrap_resamples: int,
    run_id: str,
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    drift_report: Output[HTML],
    drift_json: Output[Artifact],
    summary: Output[Markdown],
    evaluation: Output[Artifact],
) -> bool:
    import os
    import shutil

    from searchtune import logs, params, records
    from searchtune.steps import evaluate as step

    with logs.component_step("evaluate"):
        gate = params.parse(params.GateParams, params.select(params.GateParams, locals()))
        result = step.evaluate(splits.path, model.path, champion.path, evaluation.path, gate, run_id)
        statistics = result.blessing.statistics
        for model_name, values in statistics.models.items():
            for metric, estimate in values.items():
                for suffix, value in (("", estimate.value), ("_low", estimate.low), ("_high", estimate.high)):
                    if value is not None:
                        metrics.log_metric(f"{model_name}_{metric}{suffix}", value)
        for other, values in statistics.comparisons.items():
            for metric, difference in values.items():
                for suffix, value in (("", difference.difference), ("_low", difference.low), ("_high", difference.high)):
                    if value is not None:
                        metrics.log_metric(f"candidate_minus_{other}_{metric}{suffix}", value)
        for metric, info in statistics.metrics.items():
            if info.random_floor is not None:
                metrics.log_metric(f"random_{metric}", info.random_floor)
        metrics.log_metric("blessed", float(result.blessing.blessed))
        classification.log_roc_curve(result.roc_curve["fpr"], result.roc_curve["tpr"], result.roc_curve["thresholds"])
        classification.log_confusion_matrix(result.confusion_matrix["categories"], result.confusion_matrix["matrix"])
        for name, artifact in ((records.DRIFT_HTML_FILE, drift_report), (records.DRIFT_JSON_FILE, drift_json),
                               (records.SUMMARY_FILE, summary)):
            shutil.copyfile(os.path.join(evaluation.path, name), artifact.path)
        evaluation.metadata.update({"blessed": result.blessing.blessed, "reason": result.blessing.reason})
        return result.blessing.blessed
