"""Drift: has the data changed since the production model was trained?

Reference: the training sample stored with the production version (``reference_sample.parquet``);
current: a sample of this run's training split. With no production model, or one stored
without a sample, the summary says "no reference yet" and raises no alarm. (The former
train-vs-test comparison alarmed on every first run: splits are by query, so their query
texts differ by construction.)

Signals (``SIGNALS``), not raw text: a text drift test separates two query-disjoint samples
of one log by memorising queries. Compared are query and product length in words; the
topic mix of queries and of product texts (each text's nearest of ``TOPICS`` k-means
clusters of the reference's word TF-IDF/LSA vectors); the label rate; and prediction drift,
the production model's scores on both samples. Distances: normed Wasserstein (reference
standard deviations) for numbers, Jensen-Shannon (natural log) for categories, as
Evidently computes them.

A signal drifts when its distance reaches its threshold, the larger of an effect-size
floor and its noise level: how far apart two samples of the same traffic get, measured by
dealing whole queries of both samples at random to two sides (``noise_levels``). Two
random query-disjoint halves of one log are exactly such a deal, so they stay quiet; a
change larger than both the noise and the floor is flagged. Measured in
``bench/drift_calibration.py`` (``bench/results/drift_calibration.json``): on the bundled
sample and on Home Depot no A/A pair was flagged (the largest signal at 0.76 of its
threshold), while every pair with a label rate 0.10 higher or another category mix was.

(A little over 300 lines: the signals, their noise model and Evidently's report of them
belong together.)
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from searchtune import records

log = logging.getLogger(__name__)

MAX_ROWS = 5000  # per side: the reference sample holds at most this many rows (register.REFERENCE_SAMPLE_ROWS)
PREDICTION_ROWS = 1000  # per side scored by the production model: a distribution, not every row (scoring is the cost)
TOPICS = 8


@dataclasses.dataclass(frozen=True)
class Signal:
    """One compared column: what it means, its kind, and the smallest change worth an alarm."""

    meaning: str
    kind: str  # "numerical" (normed Wasserstein distance) or "categorical" (Jensen-Shannon distance)
    floor: float  # the effect size below which a change is not reported, however significant

    @property
    def method(self) -> str:
        return "wasserstein" if self.kind == "numerical" else "jensenshannon"


# Floors: 0.1 reference standard deviations for numbers; a Jensen-Shannon distance of 0.1 for
# a topic mix (about a tenth of the rows moving to other topics); 0.05 for the label, which
# is a positive rate moving by about 0.07 (0.31 -> 0.38).
SIGNALS = {
    "query_words": Signal("words per query", "numerical", 0.1),
    "product_words": Signal("words per product text", "numerical", 0.1),
    "query_topic": Signal("query topic mix", "categorical", 0.1),
    "product_topic": Signal("product topic mix", "categorical", 0.1),
    "label": Signal("label rate (share relevant)", "categorical", 0.05),
    "production_score": Signal("production model's scores (prediction drift)", "numerical", 0.1),
}
METHOD_LABELS = {"wasserstein": "Wasserstein (sd)", "jensenshannon": "Jensen-Shannon"}
PERMUTATIONS = 200
NOISE_SDS = 4.0


def distance(kind: str, reference: np.ndarray, current: np.ndarray) -> float:
    """The distance Evidently computes for this kind of column (``wasserstein`` / ``jensenshannon``)."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance

    if kind == "numerical":
        return float(wasserstein_distance(reference, current) / max(float(np.std(reference)), 0.001))
    keys = np.union1d(reference, current)
    shares = [np.searchsorted(keys, side) for side in (reference, current)]
    return float(jensenshannon(*(np.bincount(s, minlength=len(keys)) / len(s) for s in shares)))


def noise_levels(reference: pd.DataFrame, current: pd.DataFrame, reference_groups: np.ndarray, current_groups: np.ndarray,
                 permutations: int = PERMUTATIONS, seed: int = 0) -> dict[str, float]:
    """How large each signal's distance gets between two samples of the *same* traffic.

    The rows of both samples are pooled and whole queries (all rows of one query, so the
    correlation within a query is kept) are dealt at random to two sides of the original
    sizes, ``permutations`` times; a signal's noise level is the mean plus ``NOISE_SDS``
    standard deviations of its distance over those deals. Two random query-disjoint halves
    of one log are exactly such a deal, so they stay below it.

    Args:
        reference: the reference's signal columns (``drift_frames``); current: the current sample's.
        reference_groups: the query of each reference row; current_groups: of each current row.
        permutations: how many deals; seed: their seed.

    Returns:
        Signal column -> noise level.
    """
    rng = np.random.default_rng(seed)
    levels = {}
    for column in reference.columns:
        kept = [frame[column].notna().to_numpy() for frame in (reference, current)]
        values = np.concatenate([reference[column].to_numpy()[kept[0]], current[column].to_numpy()[kept[1]]])
        sides = np.repeat([0, 1], [kept[0].sum(), kept[1].sum()])
        groups = np.concatenate([np.asarray(reference_groups)[kept[0]], np.asarray(current_groups)[kept[1]]])
        _, unit = np.unique(np.char.add(sides.astype(str), np.asarray(groups, dtype=str)), return_inverse=True)
        unit_side = np.zeros(unit.max() + 1, dtype=int)
        unit_side[unit] = sides
        kind = SIGNALS[column].kind
        if kind == "categorical":
            values = np.unique(values.astype(str), return_inverse=True)[1]
        else:
            values = values.astype(float)
        null = []
        for _ in range(permutations):
            side = rng.permutation(unit_side)[unit]
            if side.all() or not side.any():
                continue
            null.append(distance(kind, values[side == 0], values[side == 1]))
        levels[column] = float(np.mean(null) + NOISE_SDS * np.std(null)) if null else 0.0
    return levels


def sample_rows(frame: pd.DataFrame, rows: int, seed: int = 0) -> pd.DataFrame:
    """At most ``rows`` rows of ``frame``, a fixed-seed sample (the same input gives the same rows)."""
    return frame if len(frame) <= rows else frame.sample(rows, random_state=seed)


def _words(texts: pd.Series) -> np.ndarray:
    return texts.astype(str).str.split().str.len().to_numpy()


def _topic_model(texts: pd.Series, seed: int = 0):
    """Word TF-IDF -> LSA -> k-means, fitted on the reference's texts only."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer
    from threadpoolctl import threadpool_limits

    distinct = texts.astype(str).drop_duplicates()
    vectorizer = TfidfVectorizer(min_df=2, max_features=20_000, sublinear_tf=True)
    features = vectorizer.fit_transform(distinct)
    components = max(2, min(50, features.shape[1] - 1, len(distinct) - 1))
    lsa = make_pipeline(TruncatedSVD(components, random_state=seed), Normalizer(copy=False))
    topics = KMeans(n_clusters=min(TOPICS, len(distinct)), n_init=4, random_state=seed)
    # One thread: k-means sums in a different order with more threads, and the topics (so the
    # verdict) would depend on the machine.
    with threadpool_limits(limits=1):
        topics.fit(lsa.fit_transform(features))

    def assign(values: pd.Series) -> np.ndarray:
        with threadpool_limits(limits=1):
            return topics.predict(lsa.transform(vectorizer.transform(values.astype(str)))).astype(str)

    return assign


def drift_frames(reference: pd.DataFrame, current: pd.DataFrame, reference_scores: np.ndarray | None = None,
                 current_scores: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One column per signal for each sample (rows with ``query``, ``product_text``, ``label``).

    The production model's scores, when both are given, fill ``production_score`` for the
    first rows of each side (NaN after them).
    """
    query_topic, product_topic = _topic_model(reference["query"]), _topic_model(reference["product_text"])

    def frame(rows: pd.DataFrame, scores: np.ndarray | None) -> pd.DataFrame:
        out = pd.DataFrame({
            "query_words": _words(rows["query"]), "product_words": _words(rows["product_text"]),
            "query_topic": query_topic(rows["query"]), "product_topic": product_topic(rows["product_text"]),
            "label": rows["label"].astype(int).astype(str).to_numpy(),
        })
        if scores is not None:
            out["production_score"] = np.nan
            out.loc[: len(scores) - 1, "production_score"] = np.asarray(scores, dtype=float)
        return out

    with_scores = reference_scores is not None and current_scores is not None
    return (frame(reference.reset_index(drop=True), reference_scores if with_scores else None),
            frame(current.reset_index(drop=True), current_scores if with_scores else None))


@dataclasses.dataclass
class Measurement:
    """The signals of two samples, their distances, noise levels and thresholds."""

    reference: pd.DataFrame  # one column per signal (``drift_frames``)
    current: pd.DataFrame
    distances: dict[str, float]
    noise: dict[str, float]
    thresholds: dict[str, float]
    reference_rows: int
    current_rows: int
    scored_rows: int

    @property
    def drifted(self) -> list[str]:
        return [c for c in self.distances if self.distances[c] >= self.thresholds[c]]


def measure(reference: pd.DataFrame, current: pd.DataFrame, scorer: Callable[[pd.DataFrame], np.ndarray | None] | None = None,
            ) -> Measurement:
    """Sample both sides, build their signals, and measure each signal's distance against its threshold.

    Args:
        reference: the production version's training sample (``query``, ``product_text``, ``label``).
        current: this run's training sample (the same columns).
        scorer: the production model's scores of a frame's rows (prediction drift on the
            first ``PREDICTION_ROWS`` rows of each sample); None = no prediction drift.
    """
    reference = sample_rows(reference, MAX_ROWS).reset_index(drop=True)
    current = sample_rows(current, MAX_ROWS, seed=1).reset_index(drop=True)
    reference_scores = current_scores = None
    if scorer is not None:
        reference_scores, current_scores = scorer(reference.head(PREDICTION_ROWS)), scorer(current.head(PREDICTION_ROWS))
    reference_frame, current_frame = drift_frames(reference, current, reference_scores, current_scores)
    noise = noise_levels(reference_frame, current_frame, reference["query"].to_numpy(), current["query"].to_numpy())
    distances = {c: distance(SIGNALS[c].kind, *(f[c].dropna().to_numpy() if SIGNALS[c].kind == "numerical"
                                                  else f[c].dropna().astype(str).to_numpy() for f in (reference_frame, current_frame)))
                 for c in reference_frame.columns}
    return Measurement(reference_frame, current_frame, distances, noise,
                       {c: round(max(SIGNALS[c].floor, noise[c]), 4) for c in distances}, len(reference), len(current),
                       0 if reference_scores is None or current_scores is None else min(len(reference_scores), len(current_scores)))


def compare(reference: pd.DataFrame, current: pd.DataFrame, output_dir: Path, *, reference_name: str, current_name: str,
            scorer: Callable[[pd.DataFrame], np.ndarray | None] | None = None) -> records.DriftSummary:
    """``measure``, then Evidently's report of the same signals and thresholds (HTML, JSON), and the summary.

    Args:
        reference: the production version's training sample (``query``, ``product_text``, ``label``).
        current: this run's training sample (the same columns).
        output_dir: folder for ``drift_report.html`` and ``drift_report.json``.
        reference_name: what the reference is, for people ("production v3's training data").
        current_name: what the current data is.
        scorer: as in ``measure``.

    Returns:
        The drift summary; ``status`` is "drifted" when any signal reached its threshold.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    measured = measure(reference, current, scorer)
    columns = list(measured.distances)
    definition = DataDefinition(numerical_columns=[c for c in columns if SIGNALS[c].kind == "numerical"],
                                categorical_columns=[c for c in columns if SIGNALS[c].kind == "categorical"])
    preset = DataDriftPreset(columns=columns, per_column_method={c: SIGNALS[c].method for c in columns},
                             per_column_threshold=measured.thresholds)
    snapshot = Report([preset]).run(current_data=Dataset.from_pandas(measured.current, data_definition=definition),
                                    reference_data=Dataset.from_pandas(measured.reference, data_definition=definition))
    output_dir.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(output_dir / records.DRIFT_HTML_FILE))  # Evidently wants str paths
    snapshot.save_json(str(output_dir / records.DRIFT_JSON_FILE))
    per_column = summarize(json.loads(snapshot.json()))
    for column, entry in per_column.items():
        entry.update(meaning=SIGNALS[column].meaning, floor=SIGNALS[column].floor, noise=round(measured.noise[column], 4),
                     reference=_describe(measured.reference[column]), current=_describe(measured.current[column]))
    drifted = [c for c in columns if per_column.get(c, {}).get("drifted")]
    summary = records.DriftSummary(
        reference=reference_name, current=current_name, drifted_columns=drifted, columns=len(columns),
        share_drifted=round(len(drifted) / len(columns), 4), per_column=per_column, reference_rows=measured.reference_rows,
        current_rows=measured.current_rows, status="drifted" if drifted else "stable",
        headline=_headline(drifted, per_column, columns), scored_rows=measured.scored_rows,
    )
    log.info("drift: %s", summary.headline)
    return summary


def no_reference(output_dir: Path, why: str, current_name: str, current_rows: int) -> records.DriftSummary:
    """The drift summary, and a one-paragraph page, when there is nothing to compare with.

    Args:
        output_dir: folder for ``drift_report.html`` and ``drift_report.json``.
        why: why there is no reference, e.g. "no production model yet".
        current_name: what the current data is; current_rows: its rows.
    """
    headline = f"no reference yet ({why}): nothing to compare, no alarm"
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / records.DRIFT_HTML_FILE).write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>searchtune drift</title></head><body>"
        f"<h1>Drift: no reference yet</h1><p>{html.escape(why)}. Drift compares this run's training data with the "
        "training data of the production model; a registered version stores a sample of it for the next run.</p>"
        "</body></html>\n", encoding="utf-8")
    summary = records.DriftSummary(reference="none", current=current_name, drifted_columns=[], columns=0, share_drifted=0.0,
                                   reference_rows=0, current_rows=current_rows, status="no_reference", headline=headline)
    (output_dir / records.DRIFT_JSON_FILE).write_text(summary.model_dump_json(indent=2) + "\n", encoding="utf-8")
    log.info("drift: %s", headline)
    return summary


def _describe(values: pd.Series) -> str:
    """A one-glance summary of one side of a signal: mean for numbers, the share of '1' for the label."""
    values = values.dropna()
    if values.empty:
        return "-"
    if values.dtype == object:
        shares = values.value_counts(normalize=True)
        if set(shares.index) <= {"0", "1"}:
            return f"{shares.get('1', 0.0):.3f} relevant"
        return f"largest topic {shares.iloc[0]:.0%}"
    return f"mean {values.mean():.2f}"


def _headline(drifted: list[str], per_column: dict, columns: list[str]) -> str:
    if not drifted:
        return f"no drift: none of {len(columns)} signals reached its threshold"
    shown = ", ".join(f"{SIGNALS[c].meaning} ({per_column[c]['method_label']} {per_column[c]['score']:.3f} >= "
                      f"{per_column[c]['threshold']:g})" for c in drifted)
    return f"DRIFT in {len(drifted)} of {len(columns)} signals: {shown}"


def summarize(report: dict) -> dict:
    """Per-column scores, thresholds and verdicts out of Evidently's JSON (every method here is a distance)."""
    details = {}
    for metric in report.get("metrics", []):
        config = metric.get("config", {})
        column, score, threshold = config.get("column"), metric.get("value"), config.get("threshold")
        if column is None or "ValueDrift" not in str(config.get("type", metric.get("metric_id", ""))):
            continue
        details[column] = {"score": None if score is None else float(score), "threshold": threshold,
                           "method": config.get("method"), "method_label": METHOD_LABELS.get(config.get("method"), ""),
                           "drifted": score is not None and threshold is not None and score >= threshold}
    return details
