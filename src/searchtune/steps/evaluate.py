"""Evaluate step: score four models on the same test rows, compute paired statistics, and
decide the blessing.

The models: the candidate, the untuned base model (cosine, Platt-mapped to a logit), a
lexical baseline (character TF-IDF cosine, fitted on the training split) and the
production model when there is one. ``searchtune.ml.stats`` gives every metric with its
query-bootstrap interval and every paired difference; ``searchtune.steps.gate`` applies
the rule. A function of its inputs: the production model comes from the champion step's
output (``steps/champion.py``), never from the registry itself.

Everything lands in one output folder: ``evaluation.json`` (``records.Evaluation``),
``blessing.json`` (``records.Blessing``: verdict, clauses, rule, statistics),
``predictions.parquet`` (every test row with each model's score), ``summary.md`` and the
drift report (HTML and JSON).
"""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix

from searchtune import records
from searchtune.ml import modeling
from searchtune.ml.batching import pick_device
from searchtune.ml.lexical import fit_tfidf, tfidf_cosine
from searchtune.ml.metrics import roc_points
from searchtune.ml.scoring import score_frame
from searchtune.ml.stats import BASE, CANDIDATE, LEXICAL, PRODUCTION, compute_statistics
from searchtune.params import GateParams
from searchtune.steps import champion, drift, ingest, summary
from searchtune.steps.gate import decide

log = logging.getLogger(__name__)

CONFUSION_THRESHOLD = 0.5


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


def score_production(champion_dir: str, test: pd.DataFrame) -> tuple[records.ChampionRecord | None, np.ndarray | None, str | None]:
    """The production model's scores on the test rows.

    Returns:
        ``(record, scores, error)``: record None when there is no champion input or no
        production model; ``error`` says why a production model that exists was not scored.
    """
    if not champion_dir:
        return None, None, None
    record = records.ChampionRecord.read(champion_dir)
    if not record.found:
        return None, None, None
    if record.error:
        return record, None, record.error
    try:
        model, tokenizer, model_record = modeling.load_trained_model(champion.champion_model_dir(champion_dir))
        return record, score_frame(model, tokenizer, model_record.architecture, model_record.max_length, test), None
    except Exception as error:  # noqa: BLE001 - any failure to judge the champion must fail closed, and say why
        return record, None, f"{type(error).__name__}: {error}"


def drift_summary(splits_dir: str, champion_dir: str, production: records.ChampionRecord | None, test: pd.DataFrame,
                  output_dir: Path) -> records.DriftSummary:
    """With a champion: has the training data moved since the champion's? Without one: how far
    is the held-out test data from what this model trained on (query text differs there by
    construction, since splits are by query)."""
    train = ingest.read_split(splits_dir, "train")
    reference_file = Path(champion.champion_model_dir(champion_dir or "."), records.REFERENCE_SAMPLE_FILE)
    if production is not None and production.reference_rows and reference_file.exists():
        reference, reference_name = pd.read_parquet(reference_file), f"production v{production.version}'s training data"
        current, current_name = train, "this run's train split"
    else:
        reference, reference_name, current, current_name = train, "this run's train split", test, "this run's test split"
    report = drift.drift_report(reference, current, output_dir / records.DRIFT_HTML_FILE, output_dir / records.DRIFT_JSON_FILE)
    return records.DriftSummary(reference=reference_name, current=current_name, **report)


def score_models(splits_dir: str, model_dir: str, champion_dir: str, test: pd.DataFrame
                 ) -> tuple[dict[str, np.ndarray], dict[str, str], records.ChampionRecord | None, records.ModelRecord]:
    """Every model's scores on the test rows: candidate, untuned base, lexical baseline, production.

    Returns:
        ``(scores, unscored, production record, candidate's model record)``; ``unscored``
        names a production model that exists but could not be scored, and why.
    """
    model, tokenizer, model_record = modeling.load_trained_model(model_dir)
    log.info("scoring %d test rows (%d queries): candidate, untuned base, lexical baseline, production",
             len(test), test["query_group"].nunique())
    validation, train = ingest.read_split(splits_dir, "validation"), ingest.read_split(splits_dir, "train")
    scores = {
        CANDIDATE: score_frame(model, tokenizer, model_record.architecture, model_record.max_length, test),
        BASE: score_untuned_base(modeling.base_model_of(model_record), model_record.max_length, test, validation),
        # Vocabulary and IDF from the training split only, never the rows being judged.
        LEXICAL: tfidf_cosine(fit_tfidf(pd.concat([train["query"], train["product_text"]])), test["query"].tolist(),
                              test["product_text"].tolist()),
    }
    production, production_scores, production_error = score_production(champion_dir, test)
    unscored = {}
    if production_scores is not None:
        scores[PRODUCTION] = production_scores
    elif production_error:
        log.error("could not score the production model: %s", production_error)
        unscored[PRODUCTION] = production_error
    return scores, unscored, production, model_record


def write_predictions(test: pd.DataFrame, scores: dict[str, np.ndarray], path: Path) -> None:
    """Every test row with each model's score: what the report's per-query views are built from."""
    frame = test[["query", "product_text", "label", "grade", "query_group"]].copy()
    for name, values in scores.items():
        frame[f"score_{name}"] = values.astype(np.float32)
    frame.to_parquet(path, index=False)


def evaluate(splits_dir: str, model_dir: str, champion_dir: str, output_dir: str, gate: GateParams,
             run_id: str = "") -> records.Evaluation:
    """Run the evaluate step.

    Args:
        splits_dir: output of the ingest step (test rows; train rows for the baseline and drift).
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
    test = ingest.read_split(splits_dir, "test")
    scores, unscored, production, model_record = score_models(splits_dir, model_dir, champion_dir, test)
    statistics = compute_statistics(
        test["query_group"].to_numpy(), test["label"].to_numpy(), scores, gains=test["target"].to_numpy(),
        logit_models={CANDIDATE, BASE, PRODUCTION}, unscored=unscored, resamples=gate.bootstrap_resamples,
        confidence=gate.confidence,
    )
    version = None if production is None else production.version
    verdict = decide(statistics, gate, production_label=f"production v{version}", candidate_id=run_id,
                     production_version=version)
    log.info("blessing: %s - %s", "BLESSED" if verdict.blessed else "NOT BLESSED", verdict.reason)
    write_predictions(test, scores, out / records.PREDICTIONS_FILE)

    labels = test["label"].to_numpy()
    probabilities = 1.0 / (1.0 + np.exp(-scores[CANDIDATE].astype(np.float64)))
    matrix = confusion_matrix(labels, (probabilities >= CONFUSION_THRESHOLD).astype(int), labels=[0, 1])
    evaluation = records.Evaluation(
        test_rows=len(test),
        test_queries=int(test["query_group"].nunique()),
        production_version=version,
        drift=drift_summary(splits_dir, champion_dir, production, test, out),
        roc_curve=roc_points(labels, probabilities),
        confusion_matrix={"categories": ["not relevant", "relevant"], "matrix": matrix.tolist(), "threshold": CONFUSION_THRESHOLD},
        blessing=verdict,
        model=model_record.model_dump(include={"architecture", "base_model", "lora_r", "best_epoch", "best_validation_auc",
                                               "epochs", "training_seconds"}),
    )
    evaluation.write(output_dir)
    verdict.write(output_dir)
    (out / records.SUMMARY_FILE).write_text(summary.render_summary(evaluation, records.IngestStats.read(splits_dir), model_record))
    log.info("wrote evaluation, blessing, predictions, summary and drift report to %s", out)
    return evaluation
