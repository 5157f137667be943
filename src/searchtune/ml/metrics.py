"""Ranking and classification metrics of one model's scores on labelled rows."""

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, log_loss, ndcg_score, roc_auc_score, roc_curve

ROC_POINTS = 200


def ranking_metrics(frame: pd.DataFrame, scores: np.ndarray) -> dict:
    """ROC AUC, PR AUC, log loss of sigmoid(score), and mean per-query nDCG@10 (graded gains)."""
    labels = frame["label"].to_numpy()
    probabilities = 1.0 / (1.0 + np.exp(-scores.astype(np.float64)))
    ndcgs = []
    for _, rows in frame.assign(_score=scores).groupby("query_group", sort=False):
        if len(rows) > 1 and rows["grade"].nunique() > 1:
            ndcgs.append(ndcg_score([rows["grade"].to_numpy()], [rows["_score"].to_numpy()], k=10))
    return {
        "roc_auc": round(float(roc_auc_score(labels, scores)), 5),
        "pr_auc": round(float(average_precision_score(labels, scores)), 5),
        "log_loss": round(float(log_loss(labels, np.clip(probabilities, 1e-7, 1 - 1e-7), labels=[0, 1])), 5),
        "ndcg_at_10": round(float(np.mean(ndcgs)), 5) if ndcgs else None,
        "ndcg_queries": len(ndcgs),
        "rows": int(len(frame)),
    }


def roc_points(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """At most ~ROC_POINTS points with finite thresholds (KFP rejects sklearn's leading inf)."""
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    thresholds = np.where(np.isfinite(thresholds), thresholds, 1.0)
    if len(fpr) > ROC_POINTS:
        keep = np.unique(np.linspace(0, len(fpr) - 1, ROC_POINTS).round().astype(int))
        fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    return {"fpr": fpr.round(6).tolist(), "tpr": tpr.round(6).tolist(), "thresholds": thresholds.round(6).tolist()}
