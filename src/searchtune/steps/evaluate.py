"""Evaluate step: score four models on the same test rows, compute paired statistics, decide the
blessing, and write what a reviewer decides from.

The models: the candidate, the untuned base model (cosine, Platt-mapped to a logit), a
lexical baseline (character TF-IDF cosine, fitted on a sample of the training split) and
the production model when there is one. ``searchtune.ml.stats`` gives every metric with
its query-bootstrap interval and every paired difference; ``searchtune.steps.evaluation.gate``
applies the rule. A function of its inputs: the production model comes from the champion
step's output (``steps/champion.py``), never from the registry itself.

Everything lands in one output folder: ``evaluation.json`` (``records.Evaluation``),
``blessing.json`` (``records.Blessing``: verdict, clauses, rule, statistics),
``predictions.parquet`` (every test row with each model's score), ``report.html`` (the
self-contained report, ``steps/evaluation/report.py``), ``summary.md``, ``model_card.md`` and the
drift report (HTML and JSON, ``steps/evaluation/drift.py``).
"""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix

from searchtune import progress, records
from searchtune.ml import modeling
from searchtune.ml.batching import pick_device
from searchtune.ml.lexical import fit_tfidf, tfidf_cosine
from searchtune.ml.metrics import roc_points
from searchtune.ml.scoring import score_frame
from searchtune.ml.stats import BASE, CANDIDATE, LEXICAL, PRODUCTION, compute_statistics
from searchtune.params import GateParams
from searchtune.steps import champion, splits
from searchtune.steps.evaluation import drift, model_card, report, report_analysis, report_trend, summary
from searchtune.steps.evaluation.gate import decide

log = logging.getLogger(__name__)

CONFUSION_THRESHOLD = 0.5
LEXICAL_FIT_ROWS = 100_000  # training rows the lexical baseline's vocabulary and IDF come from (a fixed-seed sample)
DRIFT_COLUMNS = ["query", "product_text", "label"]
DEFAULT_MODEL_NAME = "searchtune-relevance"  # the model card's name when no champion step says which model this is


def score_untuned_base(base_model: str, max_length: int, test: pd.DataFrame, validation: pd.DataFrame) -> np.ndarray:
    """The untuned base model as a bi-encoder: cosine of mean-pooled embeddings.

    Cosine is not a probability, so a one-feature logistic fit on the validation split
    (Platt scaling) maps it to a logit; AUC and nDCG do not depend on that map.
    """
    from transformers import AutoModel

    model = modeling.BiEncoder(AutoModel.from_pretrained(base_model), scale=1.0, bias=0.0).to(pick_device())
    tokenizer = modeling.load_tokenizer(base_model)
    test_cos = score_frame(model, tokenizer, "bi-encoder", max_length, test)
    val_cos = score_frame(model, tokenizer, "bi-encoder", max_length, validation)
    platt = LogisticRegression().fit(val_cos.reshape(-1, 1), validation["label"].to_numpy())
    return platt.decision_function(test_cos.reshape(-1, 1))


class Production:
    """The production model handed over by the champion step: its record and, when it loaded, a scorer."""

    def __init__(self, champion_dir: str):
        self.record: records.ChampionRecord | None = None
        self.error: str | None = None
        self.model_name = DEFAULT_MODEL_NAME
        self._loaded = None
        if not champion_dir:
            return
        record = records.ChampionRecord.read(champion_dir)
        self.model_name = record.model_name
        if not record.found:
            return
        self.record, self.error = record, record.error
        self.folder = champion.champion_model_dir(champion_dir)
        if self.error is None:
            try:
                self._loaded = modeling.load_trained_model(self.folder)
            except Exception as error:  # noqa: BLE001 - any failure to judge the champion must fail closed, and say why
                self.error = f"{type(error).__name__}: {error}"

    @property
    def version(self) -> int | None:
        return None if self.record is None else self.record.version

    def score(self, frame: pd.DataFrame) -> np.ndarray | None:
        """The production model's logits for ``frame``'s rows (None when it did not load)."""
        if self._loaded is None:
            return None
        model, tokenizer, model_record = self._loaded
        return score_frame(model, tokenizer, model_record.architecture, model_record.max_length, frame)


def score_models(splits_dir: str, model_dir: str, production: Production, test: pd.DataFrame
                 ) -> tuple[dict[str, np.ndarray], dict[str, str], records.ModelRecord]:
    """Every model's scores on the test rows: candidate, untuned base, lexical baseline, production.

    Returns:
        ``(scores, unscored, candidate's model record)``; ``unscored`` names a production
        model that exists but could not be scored, and why.
    """
    model, tokenizer, model_record = modeling.load_trained_model(model_dir)
    log.info("scoring %d test rows (%d queries): candidate, untuned base, lexical baseline, production",
             len(test), test["query_group"].nunique())
    jobs = {
        CANDIDATE: lambda: score_frame(model, tokenizer, model_record.architecture, model_record.max_length, test),
        BASE: lambda: score_untuned_base(modeling.base_model_of(model_record), model_record.max_length, test,
                                         splits.read_split(splits_dir, "validation")),
        # Vocabulary and IDF from the training split only, never the rows being judged.
        LEXICAL: lambda: tfidf_cosine(_lexical_vectorizer(splits_dir), test["query"].tolist(), test["product_text"].tolist()),
        PRODUCTION: lambda: production.score(test),
    }
    scores, unscored = {}, {}
    for name in progress.track(list(jobs), len(jobs), "scoring models", unit="models", logger=log):
        values = jobs[name]()
        if values is not None:
            scores[name] = values
    if production.record is not None and PRODUCTION not in scores:
        log.error("could not score the production model: %s", production.error)
        unscored[PRODUCTION] = production.error or "not scored"
    return scores, unscored, model_record


def _lexical_vectorizer(splits_dir: str):
    train = splits.sample_split(splits_dir, "train", LEXICAL_FIT_ROWS, columns=["query", "product_text"])
    return fit_tfidf(pd.concat([train["query"], train["product_text"]]))


def drift_summary(splits_dir: str, production: Production, output_dir: Path) -> records.DriftSummary:
    """Has the data changed since production was trained? Its stored training sample against a
    sample of this run's training split, and production's scores on both (``steps/evaluation/drift.py``)."""
    current = splits.sample_split(splits_dir, "train", drift.MAX_ROWS, columns=DRIFT_COLUMNS)
    current_name = "this run's training data"
    if production.record is None:
        return drift.no_reference(output_dir, "no production model yet", current_name, len(current))
    reference_file = Path(production.folder, records.REFERENCE_SAMPLE_FILE)
    if production.record.error or not production.record.reference_rows or not reference_file.exists():
        why = production.record.error or f"production v{production.version} was registered without a training sample"
        return drift.no_reference(output_dir, why, current_name, len(current))
    scorer = production.score if production.error is None else None
    return drift.compare(pd.read_parquet(reference_file, columns=DRIFT_COLUMNS), current, output_dir,
                         reference_name=f"production v{production.version}'s training data", current_name=current_name,
                         scorer=scorer)


def write_predictions(test: pd.DataFrame, scores: dict[str, np.ndarray], path: Path) -> pd.DataFrame:
    """Every test row with each model's score: what the report's per-query views are built from."""
    frame = test[["query", "product_text", "label", "grade", "query_group"]].copy()
    for name, values in scores.items():
        frame[f"score_{name}"] = values.astype(np.float32)
    frame.to_parquet(path, index=False)
    return frame


def evaluate(splits_dir: str, model_dir: str, champion_dir: str, output_dir: str, gate: GateParams,
             run_id: str = "") -> records.Evaluation:
    """Run the evaluate step.

    Args:
        splits_dir: output of the ingest step (test rows; train rows for the baseline, drift and slices).
        model_dir: output of the fine-tune step (the candidate).
        champion_dir: output of the champion step ('' = no production model to compare with).
        output_dir: local folder for every evaluation file.
        gate: the gate's rule and thresholds.
        run_id: the pipeline run, recorded in the blessing.

    Returns:
        The evaluation (also in ``evaluation.json``); its ``blessing`` is the verdict, with
        every model's metrics and their intervals in ``blessing.statistics``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    test = splits.read_split(splits_dir, "test")
    production = Production(champion_dir)
    scores, unscored, model_record = score_models(splits_dir, model_dir, production, test)
    statistics = compute_statistics(
        test["query_group"].to_numpy(), test["label"].to_numpy(), scores, gains=test["target"].to_numpy(),
        logit_models={CANDIDATE, BASE, PRODUCTION}, unscored=unscored, resamples=gate.bootstrap_resamples,
        confidence=gate.confidence,
    )
    version = production.version
    verdict = decide(statistics, gate, production_label=f"production v{version}", candidate_id=run_id,
                     production_version=version)
    log.info("blessing: %s - %s", "BLESSED" if verdict.blessed else "NOT BLESSED", verdict.reason)
    predictions = write_predictions(test, scores, out / records.PREDICTIONS_FILE)

    labels = test["label"].to_numpy()
    probabilities = 1.0 / (1.0 + np.exp(-scores[CANDIDATE].astype(np.float64)))
    matrix = confusion_matrix(labels, (probabilities >= CONFUSION_THRESHOLD).astype(int), labels=[0, 1])
    evaluation = records.Evaluation(
        test_rows=len(test),
        test_queries=int(test["query_group"].nunique()),
        production_version=version,
        drift=drift_summary(splits_dir, production, out),
        roc_curve=roc_points(labels, probabilities),
        confusion_matrix={"categories": ["not relevant", "relevant"], "matrix": matrix.tolist(), "threshold": CONFUSION_THRESHOLD},
        blessing=verdict,
        model=model_record.model_dump(include={"architecture", "base_model", "lora_r", "best_epoch", "best_validation_auc",
                                               "epochs", "training_seconds"}),
    )
    evaluation.write(output_dir)
    verdict.write(output_dir)
    write_pages(out, evaluation, predictions, splits_dir, model_record, gate, run_id, production.model_name,
                report_trend.trend_of_champion(champion_dir))
    log.info("wrote evaluation, blessing, predictions, report, summary, model card and drift report to %s", out)
    return evaluation


def write_pages(out: Path, evaluation: records.Evaluation, predictions: pd.DataFrame, splits_dir: str,
                model_record: records.ModelRecord, gate: GateParams, run_id: str, model_name: str,
                trend: report_trend.Trend | None = None) -> None:
    """The pages people read: report.html (with ``trend``, earlier candidates from the registry), summary.md and model_card.md."""
    stats = records.IngestStats.read(splits_dir)
    index = report_analysis.TrainingIndex.build(splits.iter_split(splits_dir, "train", columns=["query", "product_text"]))
    other = report_analysis.reference_model(report_analysis.model_columns(predictions))
    slices = report_analysis.slices(predictions, index, gate, other)
    report.write_report(out, evaluation, predictions, stats, model_record, slices, run_id, trend)
    (out / records.SUMMARY_FILE).write_text(summary.render_summary(evaluation, stats, model_record, slices), encoding="utf-8")
    ece = report_analysis.calibration(predictions["label"].to_numpy(), predictions[f"score_{CANDIDATE}"].to_numpy())["ece"]
    model_card.write_model_card(out, evaluation, stats, model_record, slices, model_name=model_name, ece=ece)
