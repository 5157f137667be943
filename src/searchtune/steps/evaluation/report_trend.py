"""The report's trend: the gate metric of the last registered versions and refused candidates, then this run.

So a reviewer of a scheduled run sees whether runs improve or drift, as TFMA's time series
and MLflow's run comparison show. Read from the registry through its API: a registered
version's gate numbers come from the blessing it was registered with (``records.Blessing``,
stored in the version), a refused candidate's from the registry's candidates log
(``registry/candidates.py``). The registry is the one the champion step read
(``champion.json``), so this run's evaluation knows where to look.

The trend is for reading only: nothing in it feeds the verdict, which stays a function of
the step's inputs. A registry this step cannot read makes the section one line saying why,
never a failed evaluation.
"""

from __future__ import annotations

import dataclasses

from searchtune import records
from searchtune.errors import SearchtuneError, first_line
from searchtune.records import Estimate
from searchtune.registry import PRODUCTION, ModelRegistry
from searchtune.steps.evaluation import report_plots as plots
from searchtune.steps.evaluation.report_html import e, figure, table
from searchtune.steps.evaluation.summary import format_estimate

MAX_POINTS = 20  # the newest registered versions and refused candidates, together, shown before this run
CANDIDATES_READ = 5 * MAX_POINTS  # newest records of the candidates log searched for refused candidates
REASON_CHARS = 160
REGISTERED, REFUSED, THIS_RUN = "registered", "refused", "this run"
COLOURS = {REGISTERED: "#1f77b4", REFUSED: "#d62728", THIS_RUN: "#ff7f0e"}


@dataclasses.dataclass
class TrendPoint:
    """One evaluated candidate: a registered version, a refused candidate, or this run."""

    at: str  # ISO-8601 UTC time it was registered, refused or decided
    kind: str  # REGISTERED, REFUSED or THIS_RUN
    run_id: str
    metric: str | None  # the gate metric it was judged on
    estimate: Estimate | None
    version: int | None = None
    production: bool = False
    reason: str = ""


@dataclasses.dataclass
class Trend:
    """What the registry knows of earlier candidates, oldest first; ``note`` says why there is none to show."""

    registry: str
    model: str
    points: list[TrendPoint]
    note: str = ""


def _estimate(value, low, high) -> Estimate | None:
    return None if value is None else Estimate(value=value, low=low, high=high)


def read_trend(registry_root: str, model: str, limit: int = MAX_POINTS) -> Trend:
    """The newest ``limit`` registered versions and refused candidates of ``model``, oldest first."""
    try:
        registry = ModelRegistry(registry_root)
        alias = registry.alias(model, PRODUCTION)
        points = [_version_point(registry, model, manifest, alias) for manifest in registry.versions(model)[-limit:]]
        # The log holds blessed candidates too; a bounded read keeps a years-old schedule's report cheap on GCS.
        logged = registry.candidates(model, limit=CANDIDATES_READ)
        refused = [c for c in logged if "unreadable" not in c and c.get("blessed") is False]
    except (SearchtuneError, OSError) as error:
        return Trend(registry_root, model, [], note=f"the registry {registry_root} could not be read ({first_line(error)})")
    points += [TrendPoint(at=str(c.get("created_at", "")), kind=REFUSED, run_id=str(c["run_id"]), metric=c.get("gate_metric"),
                          estimate=_estimate(c.get("value"), c.get("low"), c.get("high")), reason=str(c.get("reason", "")))
               for c in refused[:limit]]
    return Trend(registry_root, model, sorted(points, key=lambda p: p.at)[-limit:])


def _version_point(registry: ModelRegistry, model: str, manifest: dict, alias: dict | None) -> TrendPoint:
    number = int(manifest["version"])
    point = TrendPoint(at=str(manifest.get("created_at", "")), kind=REGISTERED, run_id=str(manifest.get("run_id", "")),
                       metric=None, estimate=None, version=number,
                       production=alias is not None and int(alias["version"]) == number)
    try:
        blessing = records.Blessing.from_bytes(registry.read_file(model, number, records.Blessing.FILE),
                                               f"{model} v{number} {records.Blessing.FILE}")
    except SearchtuneError as error:
        point.reason = f"no gate numbers: {first_line(error)}"
        return point
    point.metric, point.estimate, point.reason = blessing.rule.gate_metric, blessing.gate_estimate(), blessing.reason
    return point


def trend_of_champion(champion_dir: str) -> Trend | None:
    """The trend of the registry and model the champion step read (None without a champion step)."""
    if not champion_dir:
        return None
    try:
        champion = records.ChampionRecord.read(champion_dir)
    except SearchtuneError as error:
        return Trend("", "", [], note=f"no registry known to this step ({first_line(error)})")
    return read_trend(champion.registry_root, champion.model_name)


def this_run(evaluation: records.Evaluation, run_id: str) -> TrendPoint:
    blessing = evaluation.blessing
    return TrendPoint(at=blessing.decided_at, kind=THIS_RUN, run_id=run_id, metric=blessing.rule.gate_metric,
                      estimate=blessing.gate_estimate(), reason=("BLESSED: " if blessing.blessed else "NOT BLESSED: ")
                      + blessing.reason)


def trend_chart(points: list[TrendPoint], min_auc: float, y_label: str) -> str:
    """The gate metric with its interval per point, in time order; registered, refused and this run coloured apart."""
    ends = [v for p in points for v in (p.estimate.low, p.estimate.high, p.estimate.value) if v is not None]
    low, high = min(ends), max(ends)
    pad = max((high - low) * 0.15, 0.01)
    low, high = (min(low, min_auc), high) if min_auc >= low - 3 * pad else (low, high)
    top = high + pad + (high - low + 2 * pad) * 0.35  # headroom, so the legend covers no point
    frame = plots.Frame((-0.6, len(points) - 0.4), (low - pad, top), "", y_label,
                        width=max(420, 44 * len(points) + 80), height=280, x_ticks=[])
    if low - pad <= min_auc <= top:
        frame.line([-0.6, len(points) - 0.4], [min_auc, min_auc], "#999", width=1, dash="5,4")
        frame.text(len(points) - 0.4, min_auc, f"min_auc {min_auc:g}", anchor="end", dx=-4, dy=-4)  # clear of the legend
    for position, point in enumerate(points):
        value, lower, upper = point.estimate.value, point.estimate.low, point.estimate.high
        stroke = COLOURS[point.kind]
        if lower is not None and upper is not None:
            frame.line([position, position], [lower, upper], stroke, width=2)
        frame.dots([position], [value], stroke, radius=6 if point.production or point.kind == THIS_RUN else 4)
        frame.text(position, low - pad, _tick(point), dy=14)
    frame.legend([("registered version", COLOURS[REGISTERED]), ("refused candidate", COLOURS[REFUSED]),
                  ("this run", COLOURS[THIS_RUN])], corner="top-left")
    return frame.svg("Gate metric across runs")


def _tick(point: TrendPoint) -> str:
    return {REGISTERED: f"v{point.version}", REFUSED: "✗", THIS_RUN: "now"}[point.kind]


def _what(point: TrendPoint) -> str:
    if point.kind == REGISTERED:
        return f"v{point.version} registered" + (" (production)" if point.production else "")
    return point.kind


def trend_section(trend: Trend | None, evaluation: records.Evaluation, run_id: str) -> str:
    """The section: chart and table of the registry's points and this run, or one line saying why there are none."""
    heading = "<h2>Across runs: the gate metric of earlier candidates</h2>"
    if trend is None:
        return heading + "<p class=muted>No registry given to this evaluation (no champion step): no trend.</p>"
    if trend.note:
        return heading + f"<p class=muted>No trend: {e(trend.note)}.</p>"
    if not trend.points:
        return heading + (f"<p class=muted>The registry {e(trend.registry)} has no registered version or refused candidate "
                          f"of {e(trend.model)} yet: this run is the first point.</p>")
    metric = evaluation.blessing.rule.gate_metric
    statistics = evaluation.blessing.statistics
    points = [p for p in trend.points if p.run_id != run_id or not run_id] + [this_run(evaluation, run_id)]
    charted = [p for p in points if p.metric == metric and p.estimate is not None and p.estimate.value is not None]
    left_out = len(points) - len(charted)
    chart = trend_chart(charted, evaluation.blessing.rule.min_auc, statistics.metrics[metric].label) if charted else ""
    rows = [[f'<span class=nw>{e(p.at[:16].replace("T", " "))}</span>', f'<b style="color:{COLOURS[p.kind]}">{e(_what(p))}</b>', e(p.run_id or "–"),
             e(p.metric or "–"), e(format_estimate(p.estimate)), f"<span class=muted>{e(_short(p.reason))}</span>"]
            for p in points]
    earlier = len(points) - 1
    return (heading + f"<p>The last {earlier} candidate{'' if earlier == 1 else 's'} of <code>{e(trend.model)}</code> in "
            f"<code>{e(trend.registry)}</code> (registered versions with the numbers they were blessed on, refused "
            "candidates from the candidates log), oldest first, then this run. Intervals are each run's own: "
            "different test splits make neighbours comparable only as far as the data stayed the same.</p>"
            + figure(chart, f"{e(statistics.metrics[metric].label)} with its interval per candidate, in time order."
                     + (f" Not charted: {left_out} judged on another gate metric or without numbers (see the table)."
                        if left_out else ""))
            + table(["when (UTC)", "what", "run", "gate metric", "value [interval]", "reason"], rows, numeric_from=4, numeric_to=5))


def _short(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 1] + "…"

