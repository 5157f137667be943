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
    classification="the candidate's ROC curve and its confusion matrix at probability 0.5 (sigmoid of the score).",
    report="the evaluation report (self-contained HTML): verdict and reason, metrics with intervals, curves, "
           "calibration, per-query changes, slices, training, data, drift.",
    predictions="every test row with each model's score (Parquet: query, product_text, label, grade, query_group, "
                "score_<model>).",
    drift_report="Evidently report of drift since the production model was trained (HTML; a short page when there is "
                 "no reference yet).",
    drift_json="the same report as JSON.",
    summary="the essentials in Markdown: verdict, clauses, metrics with intervals, differences, weak slices, drift.",
    model_card="the model card (Markdown), stored with the version if it is registered.",
    evaluation="evaluation.json, blessing.json and every file above, read by the register step.",
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
    report: Output[HTML],
    predictions: Output[Dataset],
    drift_report: Output[HTML],
    drift_json: Output[Artifact],
    summary: Output[Markdown],
    model_card: Output[Markdown],
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
        if result.drift.status != "no_reference":
            metrics.log_metric("drift_signals_drifted", float(len(result.drift.drifted_columns)))
        classification.log_roc_curve(result.roc_curve["fpr"], result.roc_curve["tpr"], result.roc_curve["thresholds"])
        classification.log_confusion_matrix(result.confusion_matrix["categories"], result.confusion_matrix["matrix"])
        classification.metadata["confusion_matrix_threshold"] = result.confusion_matrix["threshold"]
        for name, artifact in ((records.REPORT_FILE, report), (records.PREDICTIONS_FILE, predictions),
                               (records.DRIFT_HTML_FILE, drift_report), (records.DRIFT_JSON_FILE, drift_json),
                               (records.SUMMARY_FILE, summary), (records.MODEL_CARD_FILE, model_card)):
            shutil.copyfile(os.path.join(evaluation.path, name), artifact.path)
        predictions.metadata.update({"rows": result.test_rows, "queries": result.test_queries,
                                     "models": ",".join(statistics.models)})
        drift_report.metadata.update({"status": result.drift.status, "headline": result.drift.headline})
        evaluation.metadata.update({"blessed": result.blessing.blessed, "reason": result.blessing.reason,
                                    "drift": result.drift.status})
        return result.blessing.blessed
