"""The report's first view: how the candidate ranks within each query, which is what the gate decides on.

Three charts. The gate metric's paired differences with their intervals (candidate minus
the untuned base, the lexical baseline and production), read from the evaluation's
statistics: the very numbers the verdict used. Each query's AUC under the candidate
against the reference (production when there is one, else the untuned base), one dot per
distinct pair sized by how many queries share it, with the diagonal. And how many queries
the candidate ranks better, the same or worse, by how much. A query with a single label
class has no AUC; how many were left out is said under the chart.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from searchtune import records
from searchtune.steps.evaluation import report_plots as plots
from searchtune.steps.evaluation.report_html import e, figure
from searchtune.steps.evaluation.summary import model_label

LARGE_CHANGE = 0.1  # a per-query AUC change beyond this is counted apart: a query ranked visibly better or worse


@dataclasses.dataclass
class PairedDifference:
    """Candidate minus one model on the gate metric, as the evaluation's statistics hold it."""

    model: str
    label: str
    difference: float | None
    low: float | None
    high: float | None


def paired_differences(evaluation: records.Evaluation) -> list[PairedDifference]:
    """Every comparison in the evaluation's statistics on the gate metric, in the statistics' order."""
    statistics, metric = evaluation.blessing.statistics, evaluation.blessing.rule.gate_metric
    out = []
    for other in statistics.comparisons:
        found = statistics.difference(other, metric)
        out.append(PairedDifference(other, model_label(other, evaluation.production_version),
                                    *((found.difference, found.low, found.high) if found else (None, None, None))))
    return out


def change_counts(changes: pd.DataFrame) -> list[tuple[str, int, str]]:
    """Queries by per-query AUC change: worse beyond ``LARGE_CHANGE``, worse, the same, better, better beyond."""
    change = changes["change"].to_numpy(float)
    return [(f"worse\n>{LARGE_CHANGE:g}", int((change < -LARGE_CHANGE).sum()), plots.WORSE),
            (f"worse\n≤{LARGE_CHANGE:g}", int(((change < 0) & (change >= -LARGE_CHANGE)).sum()), plots.WORSE),
            ("same", int((change == 0).sum()), plots.SAME),
            (f"better\n≤{LARGE_CHANGE:g}", int(((change > 0) & (change <= LARGE_CHANGE)).sum()), plots.BETTER),
            (f"better\n>{LARGE_CHANGE:g}", int((change > LARGE_CHANGE).sum()), plots.BETTER)]


def within_query_section(evaluation: records.Evaluation, changes: pd.DataFrame, other: str, labels: dict[str, str]) -> str:
    """The section: paired differences, per-query AUC scatter, counts of better / same / worse queries."""
    statistics, metric = evaluation.blessing.statistics, evaluation.blessing.rule.gate_metric
    metric_label = statistics.metrics[metric].label
    differences = paired_differences(evaluation)
    shown = [(d.label, d.difference, d.low, d.high) for d in differences if None not in (d.difference, d.low, d.high)]
    missing = [d.label for d in differences if None in (d.difference, d.low, d.high)]
    interval = plots.interval_chart(f"Candidate minus each model: {metric_label}", shown,
                                    f"difference in {metric_label} (paired, same resamples)")
    counts = statistics.counts
    single_class = counts.queries - len(changes)
    scatter = plots.agreement_scatter(f"Per-query AUC: candidate vs {labels[other]}", changes["other"].to_numpy(),
                                      changes["candidate"].to_numpy(), f"{labels[other]}: AUC within the query",
                                      "candidate: AUC within the query")
    tally = change_counts(changes)
    better = sum(count for name, count, _ in tally if name.startswith("better"))
    worse = sum(count for name, count, _ in tally if name.startswith("worse"))
    bars = plots.count_bars(f"Queries the candidate ranks better or worse than {labels[other]}", tally, "queries")
    confidence = f"{statistics.confidence:.0%}"
    return (f"<h2>Within each query: what the gate decides on</h2>"
            f"<p>Search ranks the products of one query, so the gate reads <b>{e(metric_label)}</b>. "
            f"{confidence} intervals from the evaluation's statistics ({e(statistics.method)}): "
            "right of zero is a win beyond noise, across zero no distinguishable change.</p><div class=charts>"
            + figure(interval, "The numbers the verdict used: candidate minus each model on the same test rows and resamples."
                     + (f" No interval: {e(', '.join(missing))}." if missing else ""))
            + figure(scatter, f"Each query's AUC under {e(labels[other])} (across) and the candidate (up), {len(changes)} "
                              f"queries with both classes; a dot's area grows with the queries at that point. Left out: "
                              f"{single_class} of {counts.queries} test queries with a single label class (no AUC).")
            + figure(bars, f"Of {len(changes)} queries the candidate ranks <b class=up>{better} better</b>, <b class=down>"
                           f"{worse} worse</b> and {len(changes) - better - worse} exactly the same as {e(labels[other])}.")
            + "</div>")
