"""The deployment gate: bless a candidate only when paired test statistics say it is good.

The rule, on the statistics of ``searchtune.ml.stats`` (one test split, every model on the
same rows, paired query-clustered bootstrap intervals at ``confidence``). Blessed iff every
clause that applies passes:

1. ``test_split``: the test split has both classes and at least ``min_test_queries``
   queries behind the gate metric (queries with both classes for the query-grouped AUC,
   all queries for the pooled AUC). When it fails, the reason is its count with the remedy (more
   data, or a lower ``--min-test-queries``), without the clauses whose intervals could not be
   computed on so few queries: they fail because of it and would hide it.
2. ``min_auc``: the candidate's gate metric (``gauc`` by default, ``roc_auc`` selectable)
   is at least ``min_auc``: a floor against a broken model, on the point value.
3. ``beats_base``: the lower bound of (candidate - untuned base) is above 0: tuning helped,
   beyond noise (on by default; this is what keeps an untrained adapter out).
4. ``beats_lexical``: the same against the lexical baseline (off by default).
5. ``non_inferior_to_production``: with a production model, the lower bound of
   (candidate - production) is at least ``-max_auc_drop``.
6. ``gain_over_production``: with a production model and ``require_improvement`` on, the
   lower bound of (candidate - production) is above ``min_auc_gain``.

A "beats" clause uses the lower end of the two-sided interval, so at confidence 0.95 it is
a one-sided test at 2.5%. A model the rule needs but the statistics lack, or that failed
to score, fails its clause (fail closed); only a production model that does not exist
(first run) skips its clauses. Any value that cannot be computed fails its clause.

Defaults, and why:

* ``gate_metric="gauc"``: search ranks within one query, and pooled AUC also rewards
  telling easy queries from hard ones, which no user ever sees.
* ``min_auc=0.55``: a floor against broken models (random is 0.5); whether tuning helped
  is clause 3's job. It sits below the former pooled floor of 0.6 because the query-grouped
  AUC runs well below the pooled one where the products of one query are all plausible: on
  Home Depot a char TF-IDF cosine scores 0.679 pooled but 0.587 query-grouped
  (bench/results/gate_stats.json), and a sound tuned model about 0.62, so a 0.6 floor
  would refuse good models on hard data.
* ``confidence=0.95``: the usual level; the statistics report the same level.
* ``max_auc_drop=0.01``: non-inferiority needs a margin, since with 0 an equally good
  retrain passes only by luck (its interval straddles 0). 0.01 is the loss accepted in
  exchange for fresher data. It is strict on small test splits by design: the paired
  query-grouped AUC interval of two different lexical models spans +-0.012 on Home Depot's
  2,355 test queries, which scales to about +-0.04 on the sample's 148; a retrain that
  cannot show it is within 0.01 leaves production in place, and the reason says by how much.
* ``min_test_queries=30``: measured (``searchtune.ml.stats``), the 95% intervals of a
  difference cover the truth in 94-96% of simulations from 30 queries on; below that the
  bootstrap's picture of its own noise is unreliable.
"""

from __future__ import annotations

import math

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.ml.stats import BASE, LEXICAL, PRODUCTION
from searchtune.params import GateParams
from searchtune.records import Clause, Difference, StatsResult


def decide(statistics: StatsResult, rule: GateParams, *, production_label: str = "production model", candidate_id: str = "",
           production_version: int | None = None) -> records.Blessing:
    """Apply ``rule`` to ``statistics``.

    Args:
        statistics: from ``compute_statistics``, computed at ``rule.confidence``; the
            models are named ``candidate`` (or ``statistics.candidate``), ``base``,
            ``lexical`` and ``production``.
        rule: the thresholds (``searchtune.params.GateParams``, validated on construction).
        production_label: how the reason names the production model, e.g. "production v3".
        candidate_id: the run that produced the candidate, recorded for lineage.
        production_version: the production model's version, when there is one.

    Returns:
        The blessing; ``decided_by`` names the first failed clause, or "all" when every
        applicable clause passed.

    Raises:
        SearchtuneError: the statistics were computed at another confidence (the intervals
            would not be the ones the rule asks for).
    """
    if not math.isclose(statistics.confidence, rule.confidence):
        raise SearchtuneError(f"statistics were computed at confidence {statistics.confidence} but the rule asks "
                              f"{rule.confidence}; recompute them at the rule's confidence")
    metric = rule.gate_metric
    label = statistics.metrics[metric].label if metric in statistics.metrics else metric
    clauses = [_test_split(statistics, rule), _min_auc(statistics, rule, label)]
    for model, required, name, who in ((BASE, rule.require_beat_base, "beats_base", "untuned base"),
                                       (LEXICAL, rule.require_beat_lexical, "beats_lexical", "lexical baseline")):
        if not required:
            clauses.append(Clause(name=name, status="skipped", text=f"beating the {who} not required"))
        else:
            clauses.append(_compare(statistics, model, metric, name, who, threshold=0.0, strict=True,
                                    verb_pass=f"beats {who} by", verb_fail=f"does not beat {who}"))
    clauses += _production(statistics, rule, metric, production_label)
    failed = [c for c in clauses if c.status == "failed"]
    blessed = not failed
    # A blessing's reason is the numbers that earned it (the split's size stays in the
    # clauses), and says so when there was no production model to hold it against.
    shown = [c for c in clauses if (c.status == "passed" and c.name != "test_split")
             or (c.name == "non_inferior_to_production" and c.status == "skipped")] if blessed else failed
    if failed and failed[0].name == "test_split":
        # A split too small to decide on leaves the intervals uncomputed: those clauses are its
        # consequence, and listing them would hide the cause and its remedy behind them.
        shown = [failed[0], *(c for c in failed[1:] if c.value is not None)]
    reason = "; ".join(c.text for c in shown)
    if failed and failed[0].name not in ("test_split", "min_auc"):
        reason = f"{label}: {reason}"  # the comparison texts do not name the metric
    return records.Blessing(blessed=blessed, reason=reason, decided_by=failed[0].name if failed else "all", clauses=clauses,
                            rule=rule, statistics=statistics, candidate_id=candidate_id,
                            production_version=production_version, decided_at=records.now())


def _test_split(stats: StatsResult, rule: GateParams) -> Clause:
    counts = stats.counts
    if counts.positives in (0, counts.rows):
        return Clause(name="test_split", status="failed",
                      text=f"the test split has one class ({counts.positives} relevant of {counts.rows} rows); cannot decide: "
                           "more data, or check --positive-threshold")
    queries, what = ((counts.queries_with_both_classes, "test queries with both classes") if rule.gate_metric == "gauc"
                     else (counts.queries, "test queries"))
    passed = queries >= rule.min_test_queries
    text = f"{queries} {what} ({counts.rows} rows) {'>=' if passed else '<'} min_test_queries {rule.min_test_queries}"
    if not passed:  # the user's terms: why no interval can be trusted, and the two ways out
        text += ": too few to decide; more data, or lower --min-test-queries"
    return Clause(name="test_split", status="passed" if passed else "failed", text=text, value=float(queries),
                  threshold=float(rule.min_test_queries))


def _min_auc(stats: StatsResult, rule: GateParams, label: str) -> Clause:
    candidate = stats.candidate
    if candidate in stats.unscored:
        return Clause(name="min_auc", status="failed", text=f"the candidate could not be scored ({stats.unscored[candidate]})")
    estimate = stats.estimate(candidate, rule.gate_metric)
    if estimate is None or estimate.value is None:
        return Clause(name="min_auc", status="failed", text=f"the candidate's {label} could not be computed; cannot decide")
    passed = estimate.value >= rule.min_auc
    text = f"{label} {_interval(estimate.value, estimate.low, estimate.high)} {'>=' if passed else '<'} min_auc {rule.min_auc:.3f}"
    return Clause(name="min_auc", status="passed" if passed else "failed", text=text, value=estimate.value, low=estimate.low,
                  high=estimate.high, threshold=rule.min_auc)


def _production(stats: StatsResult, rule: GateParams, metric: str, who: str) -> list[Clause]:
    exists = PRODUCTION in stats.models or PRODUCTION in stats.unscored
    non_inferior = _compare(stats, PRODUCTION, metric, "non_inferior_to_production", who, threshold=-rule.max_auc_drop,
                            strict=False, verb_pass=f"not worse than {who} by more than max_auc_drop {rule.max_auc_drop:.3f}:",
                            verb_fail=f"may be worse than {who} by more than max_auc_drop {rule.max_auc_drop:.3f}")
    if not exists:
        non_inferior = Clause(name="non_inferior_to_production", status="skipped", text="no production model to compare with")
    if not rule.require_improvement or not exists:
        why = "require_improvement is off" if not rule.require_improvement else "no production model"
        return [non_inferior, Clause(name="gain_over_production", status="skipped", text=f"no required gain ({why})")]
    gain = _compare(stats, PRODUCTION, metric, "gain_over_production", who, threshold=rule.min_auc_gain, strict=True,
                    verb_pass=f"beats {who} by more than min_auc_gain {rule.min_auc_gain:.3f}:",
                    verb_fail=f"does not beat {who} by more than min_auc_gain {rule.min_auc_gain:.3f}")
    return [non_inferior, gain]


def _compare(stats: StatsResult, model: str, metric: str, name: str, who: str, *, threshold: float, strict: bool,
             verb_pass: str, verb_fail: str) -> Clause:
    """A clause on the lower bound of (candidate - model): above ``threshold`` (``strict``) or at least it."""
    if stats.candidate in stats.unscored:
        return Clause(name=name, status="failed", text=f"the candidate could not be scored; cannot compare with {who}")
    if model in stats.unscored:
        return Clause(name=name, status="failed", text=f"{who} could not be scored ({stats.unscored[model]}); failing closed")
    if model not in stats.models:
        return Clause(name=name, status="failed", text=f"no {who} scores on the test rows; failing closed")
    diff: Difference | None = stats.difference(model, metric)
    if diff is None or diff.difference is None or diff.low is None or diff.high is None:
        return Clause(name=name, status="failed", text=f"the difference from {who} could not be computed; cannot decide")
    passed = diff.low > threshold if strict else diff.low >= threshold
    numbers = f"{_interval(diff.difference, diff.low, diff.high, signed=True)}"
    if passed:
        text = f"{verb_pass} {numbers}"
    else:
        bound = f"lower bound {diff.low:+.3f} {'<=' if strict else '<'} {threshold:+.3f}"
        text = f"{verb_fail}: {numbers}, {bound}; candidate worse in {diff.share_candidate_worse:.0%} of resamples"
    return Clause(name=name, status="passed" if passed else "failed", text=text, value=diff.difference, low=diff.low,
                  high=diff.high, threshold=threshold, share_candidate_worse=diff.share_candidate_worse)


def _interval(value: float, low: float | None, high: float | None, signed: bool = False) -> str:
    spec = "+.3f" if signed else ".3f"
    if low is None or high is None:
        return f"{value:{spec}} (no interval)"
    return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"
