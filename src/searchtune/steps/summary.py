"""The Markdown summary of an evaluation: the page a reviewer reads first (KFP's Markdown viewer).

It keeps the essentials: the verdict and the clause that decided it, every model's
metrics with their intervals next to the value of random scores, the candidate's paired
differences, and one line each on the model, the data and drift.
"""

from searchtune import records
from searchtune.ml.stats import BASE, CANDIDATE, LEXICAL, PRODUCTION

MODEL_LABELS = {CANDIDATE: "candidate", BASE: "untuned base", LEXICAL: "lexical (char TF-IDF)", PRODUCTION: "production"}
STATUS = {"passed": "✅ passed", "failed": "❌ failed", "skipped": "– skipped"}


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def format_estimate(estimate) -> str:
    if estimate is None or estimate.value is None:
        return "–"
    if estimate.low is None or estimate.high is None:
        return _number(estimate.value)
    return f"{estimate.value:.3f} [{estimate.low:.3f}, {estimate.high:.3f}]"


def _difference(difference) -> str:
    if difference is None or difference.difference is None or difference.low is None:
        return "–"
    return f"{difference.difference:+.3f} [{difference.low:+.3f}, {difference.high:+.3f}]"


def model_label(name: str, production_version: int | None) -> str:
    if name == PRODUCTION and production_version is not None:
        return f"production v{production_version}"
    return MODEL_LABELS.get(name, name)


def metrics_table(statistics, production_version: int | None) -> list[str]:
    """Rows: models, then the random floor; columns: every metric, value [interval]."""
    metrics = list(statistics.metrics)
    lines = ["| model | " + " | ".join(statistics.metrics[m].label for m in metrics) + " |",
             "|---" * (len(metrics) + 1) + "|"]
    for name, values in statistics.models.items():
        cells = [format_estimate(values.get(m)) for m in metrics]
        lines.append(f"| {model_label(name, production_version)} | " + " | ".join(cells) + " |")
    lines.append("| *random scores* | " + " | ".join(_number(statistics.metrics[m].random_floor) for m in metrics) + " |")
    return lines


def differences_table(statistics, production_version: int | None) -> list[str]:
    metrics = [m for m in statistics.metrics if m != "log_loss"]
    lines = ["| candidate minus | " + " | ".join(statistics.metrics[m].label for m in metrics) + " |",
             "|---" * (len(metrics) + 1) + "|"]
    for other, values in statistics.comparisons.items():
        lines.append(f"| {model_label(other, production_version)} | " + " | ".join(_difference(values.get(m)) for m in metrics) + " |")
    return lines


def render_summary(evaluation: records.Evaluation, stats: records.IngestStats, model: records.ModelRecord) -> str:
    """The Markdown page: verdict, clauses, metrics with intervals, differences, model, data, drift."""
    verdict, drift, test = evaluation.blessing, evaluation.drift, stats.splits["test"]
    statistics, version = verdict.statistics, evaluation.production_version
    counts = statistics.counts
    lines = [
        "# searchtune evaluation",
        "",
        f"**{'BLESSED' if verdict.blessed else 'NOT BLESSED'}**: {verdict.reason}",
        "",
        f"Test split: {counts.rows} rows, {counts.queries} queries ({counts.queries_with_both_classes} with both classes), "
        f"positive rate {test.positive_rate:.3f}; queries never appear in two splits. Intervals: {statistics.method}.",
        "",
        f"## Gate (decided by: {verdict.decided_by})",
        "",
        "| clause | outcome | detail |",
        "|---|---|---|",
        *[f"| {c.name} | {STATUS[c.status]} | {c.text} |" for c in verdict.clauses],
        "",
        "## Metrics on the same test rows",
        "",
        *metrics_table(statistics, version),
        "",
        *differences_table(statistics, version),
        "",
        *([f"Not scored: {', '.join(f'{name} ({why})' for name, why in statistics.unscored.items())}.", ""]
          if statistics.unscored else []),
        "## Model",
        f"- {model.architecture} on `{model.base_model.name_or_path}` (sha256 {str(model.base_model.sha256)[:12]}), "
        f"LoRA r={model.lora_r}; best epoch {model.best_epoch} (validation AUC {_number(model.best_validation_auc)}), "
        f"{model.training_seconds} s of training",
        "",
        "## Data",
        f"- read {stats.rows_read} rows from {len(stats.sources)} file(s); rejected {stats.rows_rejected}, "
        f"duplicates dropped {stats.duplicates_dropped}; fingerprint `{stats.fingerprint[:16]}`",
        *[f"- {split}: {s.rows} rows, {s.queries} queries, positive rate {s.positive_rate:.3f}" for split, s in stats.splits.items()],
        "",
        "## Drift",
        f"- reference: {drift.reference}; current: {drift.current}; {len(drift.drifted_columns)} of {drift.columns} columns drifted"
        + (f": {', '.join(drift.drifted_columns)}" if drift.drifted_columns else ""),
        f"- Full report: `{records.DRIFT_HTML_FILE}`.",
        "",
    ]
    return "\n".join(lines)
