"""The ROC curve as KFP's ClassificationMetrics wants it (the statistics are ``ml.stats``)."""

import numpy as np
from sklearn.metrics import roc_curve

ROC_POINTS = 200


def roc_points(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """At most ~ROC_POINTS points with finite thresholds (KFP rejects sklearn's leading inf)."""
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    thresholds = np.where(np.isfinite(thresholds), thresholds, 1.0)
    if len(fpr) > ROC_POINTS:
        keep = np.unique(np.linspace(0, len(fpr) - 1, ROC_POINTS).round().astype(int))
        fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    return {"fpr": fpr.round(6).tolist(), "tpr": tpr.round(6).tolist(), "thresholds": thresholds.round(6).tolist()}
