"""The Markdown summary of an evaluation (KFP's Markdown viewer), and the table cells it shares with the report.

It keeps the essentials: the verdict and the clause that decided it, every model's
metrics with their intervals next to the value of random scores, the candidate's paired
differences, the slices where the candidate is worse, and one line each on the model, the
data and drift. The full picture (curves, calibration, per-query changes, slices) is the
HTML report next to it (``report.html``).
"""

from __future__ import annotations

from searchtune import records
from searchtune.ml.stats import BASE, CANDIDATE, LEXICAL, PRODUCTION

MODEL_LABELS = {CANDIDATE: "candidate", BASE: "untuned base", LEXICAL: "lexical (char TF-IDF)", PRODUCTION: "production"}
STATUS = {"passed": "✅ passed", "failed": "❌ failed", "skipped": "– skipped"}


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def format_estimate(estimate) -> str:
    """``0.812 [0.790, 0.834]``; ``–`` when there is no value."""
    if estimate is None or estimate.value is None:
        return "–"
    if estimate.low is None or estimate.high is None:
        return _number(estimate.value)
    return f"{estimate.value:.3f} [{estimate.low:.3f}, {estimate.high:.3f}]"


def format_difference(difference) -> str:
    """``+0.021 [+0.004, +0.039]``; ``–`` when there is no interval."""
    if difference is None or difference.difference is None or difference.low is None:
        return "–"
    return f"{difference.difference:+.3f} [{difference.low:+.3f}, {difference.high:+.3f}]"


def model_label(name: str, production_version: int | None) -> str:
    if name == PRODUCTION and production_version is not None:
        return f"production v{production_version}"
    return MODEL_LABELS.get(name, name)


def metrics_table_rows(statistics, production_version: int | None) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """The metric table's header and rows (models, then random scores) and the differences table (header first)."""
    metrics = list(statistics.metrics)
    header = ["model", *(statistics.metrics[m].label for m in metrics)]
    rows = [[model_label(name, production_version), *(format_estimate(values.get(m)) for m in metrics)]
            for name, values in statistics.models.items()]
    rows.append(["random scores", *(_number(statistics.metrics[m].random_floor) for m in metrics)])
    compared = [m for m in metrics if m != "log_loss"]
    differences = [["candidate minus", *(statistics.metrics[m].label for m in compared)]]
    differences += [[model_label(other, production_version), *(format_difference(values.get(m)) for m in compared)]
                    for other, values in statistics.comparisons.items()]
    return header, rows, differences


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *("| " + " | ".join(row) + " |" for row in rows)]


def slice_lines(slices, production_version: int | None) -> list[str]:
    """One line per slice whose difference's interval lies below zero (where the candidate loses), or a line saying none does."""
    losing = [s for s in slices if s.difference is not None and s.difference.high is not None and s.difference.high < 0]
    if not slices:
        return []
    if not losing:
        return [f"- no slice where the candidate is worse beyond noise ({len(slices)} slices; see the report)"]
    return [f"- worse on {s.family} {s.name}: {format_difference(s.difference)} ({s.queries} queries)" for s in losing]


def render_summary(evaluation: records.Evaluation, stats: records.IngestStats, model: records.ModelRecord,
                   slices: list | None = None) -> str:
    """The Markdown page: verdict, clauses, metrics with intervals, differences, slices, model, data, drift."""
    verdict, drift, test = evaluation.blessing, evaluation.drift, stats.splits["test"]
    statistics, version = verdict.statistics, evaluation.production_version
    counts = statistics.counts
    header, rows, differences = metrics_table_rows(statistics, version)
    rows[-1][0] = "*random scores*"
    rejects = ", ".join(f"{reason} {count}" for reason, count in sorted(stats.rejects_by_reason.items()))
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
        *_markdown(["clause", "outcome", "detail"], [[c.name, STATUS[c.status], c.text] for c in verdict.clauses]),
        "",
        "## Metrics on the same test rows",
        "",
        *_markdown(header, rows),
        "",
        *_markdown(differences[0], differences[1:]),
        "",
        *([f"Not scored: {', '.join(f'{name} ({why})' for name, why in statistics.unscored.items())}.", ""]
          if statistics.unscored else []),
        *(["## Slices", *slice_lines(slices, version), ""] if slices else []),
        "## Model",
        f"- {model.architecture} on `{model.base_model.label()}`, LoRA r={model.lora_r}; best epoch {model.best_epoch} (validation AUC {_number(model.best_validation_auc)}), "
        f"{model.training_seconds} s of training",
        "",
        "## Data",
        f"- read {stats.rows_read} rows from {len(stats.sources)} file(s); rejected {stats.rows_rejected}"
        + (f" ({rejects})" if rejects else "") + f", duplicates dropped {stats.duplicates_dropped}; "
        f"fingerprint `{stats.fingerprint[:16]}`",
        *[f"- {split}: {s.rows} rows, {s.queries} queries, positive rate {s.positive_rate:.3f}" for split, s in stats.splits.items()],
        "",
        "## Drift",
        f"- {drift.headline or drift.status}; reference: {drift.reference}; current: {drift.current}",
        f"- Full report: `{records.DRIFT_HTML_FILE}`.",
        "",
        f"Curves, calibration, per-query changes and slices: `{records.REPORT_FILE}` (the evaluate step's *report* artifact).",
        "",
    ]
    return "\n".join(lines)
