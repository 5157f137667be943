"""The evaluation report: one self-contained HTML page a reviewer can decide from.

It leads with what decides: the gate's verdict, reason and clauses, then the within-query
view the verdict rests on (``report_within``: the paired differences with their intervals,
per-query AUC against the reference, queries better / same / worse), then the trend across
runs from the registry (``report_trend``). Below: every model's metrics with intervals,
pooled ROC and precision-recall curves, score distributions, calibration, the most
improved and most regressed queries with their products, slices, training, data and
drift. Everything is inline:
CSS in a ``<style>`` element, charts as SVG (``report_plots``), no script and no network
reference, so it renders the same from disk and in the KFP UI's HTML viewer.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from searchtune import records
from searchtune.steps.evaluation import report_analysis as analysis
from searchtune.steps.evaluation import report_plots as plots
from searchtune.steps.evaluation import report_trend, report_within
from searchtune.steps.evaluation.report_html import e as _e
from searchtune.steps.evaluation.report_html import figure as _figure
from searchtune.steps.evaluation.report_html import table as _table
from searchtune.steps.evaluation.summary import format_difference, format_estimate, metrics_table_rows, model_label

MAX_PRODUCTS_SHOWN = 20  # per query in the most improved / regressed lists
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:16px 24px;color:#222}
h1{font-size:22px;margin:4px 0}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.banner{padding:12px 16px;border-radius:6px;font-size:16px;margin:10px 0}.pass{background:#e6f4ea;border:2px solid #34a853}
.fail{background:#fce8e6;border:2px solid #d93025}.muted{color:#666;font-size:12.5px}.charts{display:flex;flex-wrap:wrap;gap:14px}
.chart{font-size:10.5px;font-family:system-ui,sans-serif}figure{margin:0}figcaption{font-size:12.5px;color:#444;max-width:360px}
details{margin:2px 0}summary{cursor:pointer}.up,.passed{color:#137333}.down,.failed{color:#c5221f}.skipped{color:#777}
.warn{color:#b06000;font-weight:600}.nw{white-space:nowrap}
"""


def verdict_section(evaluation: records.Evaluation, glance: str) -> str:
    """The banner (verdict and reason), ``glance`` under it, then the rule and every clause."""
    blessing = evaluation.blessing
    state = "BLESSED" if blessing.blessed else "NOT BLESSED"
    clauses = [[_e(c.name), f'<b class="{c.status}">{_e(c.status)}</b>', _e(c.text)] for c in blessing.clauses]
    return (f'<div class="banner {"pass" if blessing.blessed else "fail"}"><b>{state}</b>: {_e(blessing.reason)}</div>'
            + glance + f'<p class="muted">Decided by: {_e(blessing.decided_by)}. Rule: gate metric {_e(blessing.rule.gate_metric)}, '
            f"min_auc {blessing.rule.min_auc:g}, max_auc_drop {blessing.rule.max_auc_drop:g}, confidence "
            f"{blessing.rule.confidence:g}, min_test_queries {blessing.rule.min_test_queries}.</p>"
            + _table(["clause", "outcome", "numbers"], clauses, numeric_from=9))


def metrics_section(evaluation: records.Evaluation) -> str:
    statistics, version = evaluation.blessing.statistics, evaluation.production_version
    header, rows, differences = metrics_table_rows(statistics, version)
    return ("<h2>Metrics on the same test rows</h2>"
            f'<p class="muted">{statistics.counts.rows} rows, {statistics.counts.queries} queries '
            f"({statistics.counts.queries_with_both_classes} with both classes). Value [interval]: {_e(statistics.method)}.</p>"
            + _table([_e(h) for h in header], [[_e(c) for c in row] for row in rows])
            + _table([_e(h) for h in differences[0]], [[_e(c) for c in row] for row in differences[1:]]))


def curves_section(predictions: pd.DataFrame, models: list[str], labels: dict[str, str]) -> str:
    y = predictions["label"].to_numpy()
    curves = analysis.curves(y, {m: predictions[f"score_{m}"].to_numpy() for m in models})
    roc = plots.curve_chart("ROC curves", {m: c["roc"] for m, c in curves.items()}, labels, "false positive rate",
                            "true positive rate", diagonal=True)
    pr = plots.curve_chart("Precision-recall curves", {m: c["pr"] for m, c in curves.items()}, labels, "recall", "precision",
                           corner="top-right")
    histograms = []
    for m in models:
        shares = analysis.score_histogram(y, predictions[f"score_{m}"].to_numpy())
        histograms.append(_figure(plots.histogram_chart(f"Scores of {labels[m]}", shares["edges"],
                                                        {k: shares[k] for k in ("relevant", "not relevant")}, "score"),
                                  f"Scores of {_e(labels[m])} by label: the less the two overlap, the better it separates."))
    logit_models = [m for m in models if m in analysis.LOGIT_MODELS]
    calibration = {m: analysis.calibration(y, predictions[f"score_{m}"].to_numpy()) for m in logit_models}
    reliability = plots.reliability_chart("Reliability diagram", calibration, labels)
    return ("<h2>Curves, score distributions and calibration</h2><div class=charts>"
            + _figure(roc, "ROC curves on the pooled test rows (pooled ROC AUC in the table above).")
            + _figure(pr, f"Precision-recall curves; a random ranking sits at the positive rate {y.mean():.3f}.")
            + _figure(reliability, "Predicted probability (sigmoid of the score) against the observed share relevant, "
                                   "10 equal-width bins; ECE = row-weighted mean gap. The lexical cosine is no probability.")
            + "".join(histograms) + "</div>")


def glance_section(evaluation: records.Evaluation, changes: pd.DataFrame, slices: list[analysis.Slice], other: str,
                   labels: dict[str, str]) -> str:
    """Where the candidate wins and loses, in four lines under the verdict."""
    statistics, metric = evaluation.blessing.statistics, evaluation.blessing.rule.gate_metric
    label = statistics.metrics[metric].label
    better, worse = int((changes["change"] > 0).sum()), int((changes["change"] < 0).sum())
    measured = [s for s in slices if s.difference is not None and s.difference.difference is not None]
    weakest = min(measured, key=lambda s: s.difference.difference, default=None)
    lines = [f"{_e(label)}: candidate {_e(format_estimate(statistics.estimate(statistics.candidate, metric)))}, "
             f"{_e(labels[other])} {_e(format_estimate(statistics.estimate(other, metric)))}; candidate minus "
             f"{_e(labels[other])} {_e(format_difference(statistics.difference(other, metric)))}",
             f"per query: <b class=up>{better} better</b>, <b class=down>{worse} worse</b>, "
             f"{len(changes) - better - worse} the same, of {len(changes)}",
             ("weakest slice: " + _e(f"{weakest.family} {weakest.name}, candidate minus {labels[other]} "
                                     f"{format_difference(weakest.difference)}") if weakest else "no slice large enough for an interval"),
             "drift: " + _e(evaluation.drift.headline or evaluation.drift.status)]
    return "<ul>" + "".join(f"<li>{line}</li>" for line in lines) + "</ul>"


def per_query_section(predictions: pd.DataFrame, changes: pd.DataFrame, other: str, labels: dict[str, str]) -> str:
    improved, regressed = analysis.top_changes(changes)
    return (f"<h2>Per query: candidate vs {_e(labels[other])}</h2>"
            "<p class=muted>The queries whose ranking changed most (AUC within the query; how many changed at all is "
            "in the first section). Open one to see its products in the candidate's order.</p>"
            + _query_list(f"The {len(improved)} most improved queries", improved, predictions, other, labels)
            + _query_list(f"The {len(regressed)} most regressed queries", regressed, predictions, other, labels))


def _query_list(title: str, chosen: pd.DataFrame, predictions: pd.DataFrame, other: str, labels: dict[str, str]) -> str:
    if chosen.empty:
        return f"<h3>{_e(title)}</h3><p class=muted>none</p>"
    items = []
    for position, (group, row) in enumerate(chosen.iterrows()):
        rows = predictions[predictions["query_group"] == group].sort_values(f"score_{analysis.CANDIDATE}", ascending=False)
        shown = rows.head(MAX_PRODUCTS_SHOWN)
        products = _table(["product (by candidate score)", "grade", "relevant", "candidate", _e(labels[other])],
                          [[_e(r.product_text), f"{r.grade:g}", "yes" if r.label else "no", f"{r.score_candidate:.3f}",
                            f"{getattr(r, f'score_{other}'):.3f}"] for r in shown.itertuples()], numeric_from=1)
        more = f'<p class=muted>{len(rows) - len(shown)} more rows not shown</p>' if len(rows) > len(shown) else ""
        items.append(f"<details{' open' if position == 0 else ''}><summary><b>{_e(row['query'])}</b>: AUC {row['other']:.2f} &rarr; {row['candidate']:.2f} "
                     f"({row['change']:+.2f}), {int(row['rows'])} products</summary>{products}{more}</details>")
    return f"<h3>{_e(title)}</h3>" + "".join(items)


def slices_section(slices: list[analysis.Slice], other: str, metric_label: str, labels: dict[str, str]) -> str:
    rows = []
    for s in slices:
        numbers = ([_e(format_estimate(s.candidate)), _e(format_estimate(s.other)), _e(format_difference(s.difference))]
                   if s.candidate is not None else [f'<span class=muted>{_e(s.note)}</span>', "", ""])
        rows.append([_e(s.family), _e(s.name), str(s.rows), str(s.queries), *numbers])
    return (f"<h2>Slices: {_e(metric_label)} with its interval</h2>"
            "<p class=muted>Head vs tail: splits are by query, so a test query never occurs in training; a <i>tail</i> query "
            "has a word that no training query contains (new vocabulary, rare products, typos), a <i>head</i> query only "
            "words that training queries contain. Unseen products: the product text never occurs in the training split.</p>"
            + _table(["slice", "", "rows", "queries", "candidate", _e(labels[other]), "candidate minus"], rows, numeric_from=2))


def training_section(model: records.ModelRecord) -> str:
    epochs = [e.epoch for e in model.epochs]
    charts = (_figure(plots.epoch_chart("Training loss", epochs, [e.train_loss for e in model.epochs], "train loss",
                                        model.best_epoch), "Mean training loss per epoch.")
              + _figure(plots.epoch_chart("Validation AUC", epochs, [e.validation_auc for e in model.epochs],
                                          "validation ROC AUC", model.best_epoch),
                        f"Validation ROC AUC per epoch; the dashed line is the epoch kept (best, {model.best_epoch})."))
    rows = [[str(e.epoch), f"{e.train_loss:.4f}", "–" if e.validation_auc is None else f"{e.validation_auc:.4f}",
             f"{e.examples_per_second:g}", f"{e.seconds:g}", f"{e.padding_efficiency:.0%}"] for e in model.epochs]
    return ("<h2>Training</h2>"
            f"<p>{_e(model.architecture)} on <code>{_e(model.base_model.label())}</code>, LoRA r={model.lora_r}, "
            f"{model.train_rows} training rows on {_e(model.device)}, {model.training_seconds:g} s.</p>"
            f"<div class=charts>{charts}</div>"
            + _table(["epoch", "train loss", "validation AUC", "examples/s", "seconds", "real tokens"], rows))


def data_section(stats: records.IngestStats) -> str:
    rejects = ", ".join(f"{_e(reason)}: {count}" for reason, count in sorted(stats.rejects_by_reason.items()))
    splits = [[_e(name), str(s.rows), str(s.queries), f"{s.positive_rate:.3f}"] for name, s in stats.splits.items()]
    return ("<h2>Data</h2>"
            f"<p>Read {stats.rows_read} rows from {len(stats.sources)} file(s); rejected {stats.rows_rejected}"
            + (f" ({rejects})" if rejects else "") + f"; {stats.duplicates_dropped} duplicates dropped; {stats.rows_kept} kept. "
            f"Fingerprint <code>{_e(stats.fingerprint[:16])}</code>. Splits are by query hash: no query is in two splits.</p>"
            + _table(["split", "rows", "queries", "positive rate"], splits))


def drift_section(drift: records.DriftSummary) -> str:
    css = {"drifted": "warn", "no_reference": "muted"}.get(drift.status, "")
    rows = [[_e(entry.get("meaning", column)), _e(entry.get("reference", "")), _e(entry.get("current", "")),
             _e(entry.get("method_label", entry.get("method", ""))),
             "–" if entry.get("score") is None else f"{entry['score']:.3f}", f"{entry.get('threshold', 0):g}",
             '<b class=warn>drift</b>' if entry.get("drifted") else "no"] for column, entry in drift.per_column.items()]
    table = _table(["signal", "reference", "current", "distance", "value", "threshold", "drift"], rows, numeric_from=4) if rows else ""
    return ("<h2>Drift since production was trained</h2>"
            f'<p class="{css}">{_e(drift.headline or drift.status)}</p>'
            + (f"<p class=muted>Reference: {_e(drift.reference)} ({drift.reference_rows} rows); current: {_e(drift.current)} "
               f"({drift.current_rows} rows). A signal drifts when its distance reaches its threshold: the larger of the "
               "signal's floor (the smallest change worth an alarm) and its noise level (how far two samples of the same "
               "traffic get apart, from random query-level reshuffles of the two samples).</p>" if rows else
               "<p class=muted>Drift compares this run's training data with a sample of the production model's training "
               "data stored with it; the next run will have one if this model is registered.</p>") + table
            + f'<p>Full report: <a href="{records.DRIFT_HTML_FILE}">{records.DRIFT_HTML_FILE}</a> (next to this file; in the '
              "KFP UI, the evaluate step's <i>drift_report</i> artifact).</p>")


def render_report(evaluation: records.Evaluation, predictions: pd.DataFrame, stats: records.IngestStats,
                  model: records.ModelRecord, slices: list[analysis.Slice], run_id: str = "",
                  trend: report_trend.Trend | None = None) -> str:
    """The report as one HTML document.

    Args:
        evaluation: the evaluation record (verdict, statistics, drift).
        predictions: every test row with each model's score (``predictions.parquet``).
        stats: the ingest step's record (counts, rejects, splits).
        model: the candidate's model record (training history).
        slices: from ``report_analysis.slices``.
        run_id: the pipeline run, shown in the title.
        trend: earlier candidates from the registry (``report_trend.read_trend``); None = no registry given.
    """
    models = analysis.model_columns(predictions)
    other = analysis.reference_model(models)
    labels = {m: model_label(m, evaluation.production_version) for m in models}
    statistics = evaluation.blessing.statistics
    metric_label = statistics.metrics[evaluation.blessing.rule.gate_metric].label
    title = f"searchtune evaluation {run_id}".strip()
    changes = analysis.query_changes(predictions, other)
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class=muted>Decided {_e(evaluation.blessing.decided_at)}; candidate {_e(model.architecture)} '
            f"(LoRA r={model.lora_r}); compared with {', '.join(_e(labels[m]) for m in models if m != analysis.CANDIDATE)}.</p>",
            verdict_section(evaluation, glance_section(evaluation, changes, slices, other, labels)),
            report_within.within_query_section(evaluation, changes, other, labels),
            report_trend.trend_section(trend, evaluation, run_id), metrics_section(evaluation),
            curves_section(predictions, models, labels), per_query_section(predictions, changes, other, labels),
            slices_section(slices, other, metric_label, labels),
            training_section(model), data_section(stats), drift_section(evaluation.drift)]
    return (f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{_e(title)}</title><style>{STYLE}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")


def write_report(folder: Path, evaluation: records.Evaluation, predictions: pd.DataFrame, stats: records.IngestStats,
                 model: records.ModelRecord, slices: list[analysis.Slice], run_id: str = "",
                 trend: report_trend.Trend | None = None) -> Path:
    """Render the report into ``<folder>/report.html`` and return the path."""
    path = Path(folder) / records.REPORT_FILE
    path.write_text(render_report(evaluation, predictions, stats, model, slices, run_id, trend), encoding="utf-8")
    return path

