"""The last lines of ``searchtune run``'s final block: what to do next, given how the run ended.

A refused run is an answer, not a failure (exit 3), so its block says how to act on the
answer: which flag relaxes the clause that refused it, where the evidence is, and that
more data is the usual way to a model that passes. A promoted run says how to serve it.
"""

from __future__ import annotations

from searchtune.cli.parameters import flag
from searchtune.records import Blessing

INDENT = " " * 12  # under the values of "  registry: "


def _gate_flag(name: str, value) -> str:
    return f"searchtune run {flag(name)} {value}" if value is not None else f"searchtune run --no-{flag(name)[2:]}"


def next_steps(blessing: Blessing, registry_root: str, model_name: str, promoted: bool, production_version: int | None,
               report: str) -> list[str]:
    """The ``next:`` lines of the final block.

    Args:
        blessing: the gate's verdict.
        registry_root: the run's registry.
        model_name: the model's name in it.
        promoted: the run registered a version and made it production.
        production_version: the production version the candidate was compared with (None: first run).
        report: the path of the run's report.
    """
    serve = f"searchtune serve --model {registry_root.rstrip('/')}/{model_name}@production"
    if promoted:
        return [f"  next:     serve it: {serve}  (make serve, for the default registry)"]
    if blessing.blessed:  # blessed but not promoted: registration said why, above
        return [f"  next:     see the registry line above; {serve} serves the production version"]
    rule = blessing.rule
    relax = {
        "beats_base": ("the candidate does not clearly beat the untuned base model",
                       _gate_flag("require_beat_base", None) + " registers it anyway"),
        "beats_lexical": ("the candidate does not clearly beat the lexical baseline",
                          _gate_flag("require_beat_lexical", None) + " registers it anyway"),
        "min_auc": (f"the candidate ranks below the floor min_auc {rule.min_auc:g}: check the label and text columns",
                    _gate_flag("min_auc", "X") + " lowers the floor"),
        "test_split": (f"fewer than {rule.min_test_queries} test queries: the intervals would not be reliable",
                       _gate_flag("min_test_queries", "N") + " accepts fewer"),
        "non_inferior_to_production": (f"production v{production_version} stays (and is what make serve serves)",
                                       _gate_flag("max_auc_drop", "X") + " tolerates a larger drop"),
        "gain_over_production": (f"production v{production_version} stays (and is what make serve serves)",
                                 _gate_flag("require_improvement", None) + " drops the required gain"),
    }
    why, how = relax.get(blessing.decided_by, (f"the gate's clause {blessing.decided_by!r} refused it",
                                               "searchtune run --help lists the gate's flags"))
    return [f"  next:     {why}; the report shows where it wins and loses: {report}",
            f"{INDENT}more (or your own) judgements usually help: searchtune run --data FILE",
            f"{INDENT}{how}"]
