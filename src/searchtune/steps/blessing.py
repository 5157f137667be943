"""The deployment gate: decide whether a candidate may replace the production model.

Like TFX's evaluator, the decision is written down as a *blessing* record (blessed or
not, why, and what it compared to) so reviewers and the registration step read the same
verdict. The same rule is applied again at registration time against whatever the
``production`` alias points to then, because another run may have moved it meanwhile.
"""

import datetime as _dt
import math


def decide(
    candidate_auc: float,
    min_auc: float,
    max_auc_drop: float,
    champion: dict | None,
    candidate_id: str = "",
) -> dict:
    """Apply the gate and return the blessing record.

    Args:
        candidate_auc: the candidate's ROC AUC on the test split.
        min_auc: absolute floor the candidate must reach.
        max_auc_drop: how far below the champion's AUC the candidate may be (0: it must
            be at least as good).
        champion: ``{"version": int, "auc": float}`` of the production model, or None when
            there is none; then only ``min_auc`` applies.
        candidate_id: the run that produced the candidate, recorded for lineage.

    Returns:
        ``{"blessed", "reason", "candidate", "champion", "min_auc", "max_auc_drop",
        "metric", "decided_at"}``. Anything that cannot be evaluated (a NaN AUC, a
        champion without an AUC) fails closed: ``blessed`` is False and the reason says why.
    """
    record = {
        "blessed": False,
        "reason": "",
        "metric": "roc_auc",
        "candidate": {"id": candidate_id, "auc": _as_float(candidate_auc)},
        "champion": None if champion is None else {"version": champion.get("version"), "auc": _as_float(champion.get("auc"))},
        "min_auc": float(min_auc),
        "max_auc_drop": float(max_auc_drop),
        "decided_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    auc = record["candidate"]["auc"]
    if auc is None:
        record["reason"] = "candidate AUC could not be computed; failing closed"
        return record
    if auc < min_auc:
        record["reason"] = f"candidate AUC {auc:.4f} is below min_auc {min_auc:.4f}"
        return record
    if champion is None:
        record["blessed"] = True
        record["reason"] = f"candidate AUC {auc:.4f} >= min_auc {min_auc:.4f}; no production model to compare with"
        return record
    champion_auc = record["champion"]["auc"]
    if champion_auc is None:
        record["reason"] = f"production model v{champion.get('version')} has no recorded AUC; failing closed"
        return record
    floor = champion_auc - max_auc_drop
    if auc < floor:
        record["reason"] = (
            f"candidate AUC {auc:.4f} is below production v{champion.get('version')} AUC "
            f"{champion_auc:.4f} - max_auc_drop {max_auc_drop:.4f} = {floor:.4f}"
        )
        return record
    record["blessed"] = True
    record["reason"] = (
        f"candidate AUC {auc:.4f} >= min_auc {min_auc:.4f} and >= production v{champion.get('version')} "
        f"AUC {champion_auc:.4f} - max_auc_drop {max_auc_drop:.4f}"
    )
    return record


def _as_float(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value
