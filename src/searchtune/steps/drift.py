"""Evidently data-drift report between reference data and this run's data.

Query and product text are declared as text columns (Evidently then uses a text-specific
test instead of treating each distinct string as a category, which is both slow and
meaningless), next to their word counts as numerical columns and the label as categorical.
"""

import json
import logging

import pandas as pd

log = logging.getLogger(__name__)

MAX_ROWS = 5000  # per side: drift tests on more rows add time, not information
TEXT_COLUMNS = ["query", "product_text"]
NUMERICAL_COLUMNS = ["query_words", "product_words"]
CATEGORICAL_COLUMNS = ["label"]


def drift_frame(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The columns the drift report compares, sampled to at most MAX_ROWS rows."""
    if len(frame) > MAX_ROWS:
        frame = frame.sample(MAX_ROWS, random_state=seed)
    return pd.DataFrame(
        {
            "query": frame["query"].astype(str).to_numpy(),
            "product_text": frame["product_text"].astype(str).to_numpy(),
            "query_words": frame["query"].astype(str).str.split().str.len().to_numpy(),
            "product_words": frame["product_text"].astype(str).str.split().str.len().to_numpy(),
            "label": frame["label"].astype(int).astype(str).to_numpy(),
        }
    )


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, html_path: str, json_path: str) -> dict:
    """Write the Evidently report as HTML and JSON and return a short summary.

    Args:
        reference: rows with ``query``, ``product_text``, ``label`` (the baseline).
        current: the same columns for this run's data.
        html_path: where the HTML report goes.
        json_path: where the JSON report goes.

    Returns:
        ``{"drifted_columns": [...], "columns": n, "share_drifted": x, "reference_rows", "current_rows"}``.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(
        text_columns=TEXT_COLUMNS, numerical_columns=NUMERICAL_COLUMNS, categorical_columns=CATEGORICAL_COLUMNS
    )
    reference_data = Dataset.from_pandas(drift_frame(reference), data_definition=definition)
    current_data = Dataset.from_pandas(drift_frame(current, seed=1), data_definition=definition)
    snapshot = Report([DataDriftPreset()]).run(current_data=current_data, reference_data=reference_data)
    # Evidently wants str paths, not Path objects.
    snapshot.save_html(str(html_path))
    snapshot.save_json(str(json_path))
    summary = summarize(json.loads(snapshot.json()))
    summary.update(reference_rows=min(len(reference), MAX_ROWS), current_rows=min(len(current), MAX_ROWS))
    log.info("drift report: %d of %d columns drifted %s; wrote %s and %s", len(summary["drifted_columns"]),
             summary["columns"], summary["drifted_columns"], html_path, json_path)
    return summary


def summarize(report: dict) -> dict:
    """Pull per-column drift verdicts out of Evidently's JSON."""
    drifted, columns, details = [], 0, {}
    for metric in report.get("metrics", []):
        config = metric.get("config", {})
        column = config.get("column")
        if column is None or "ValueDrift" not in str(config.get("type", metric.get("metric_id", ""))):
            continue
        columns += 1
        score = metric.get("value")
        threshold = config.get("threshold")
        method = config.get("method")
        is_drifted = _is_drifted(score, threshold, method)
        details[column] = {"score": score, "threshold": threshold, "method": method, "drifted": is_drifted}
        if is_drifted:
            drifted.append(column)
    return {"drifted_columns": drifted, "columns": columns, "share_drifted": round(len(drifted) / columns, 4) if columns else 0.0,
            "per_column": details}


def _is_drifted(score, threshold, method) -> bool:
    if score is None or threshold is None:
        return False
    # p-value tests drift when the value is small; distance tests when it is large.
    p_value_methods = ("K-S p_value", "chi-square p_value", "Z-test p_value", "p_value")
    if method and any(m.lower() in str(method).lower() for m in p_value_methods):
        return score < threshold
    return score >= threshold
