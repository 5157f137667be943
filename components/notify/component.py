"""KFP component for the notify step (the pipeline's exit handler); the logic is ``searchtune.steps.notify.notify``."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Metrics, Output

from searchtune.orchestration.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def notify(
    notify_webhook: str,
    registry_root: str,
    model_name: str,
    run_id: str,
    status: dsl.PipelineTaskFinalStatus,
    verdict_metrics: Output[Metrics],
) -> NamedTuple("Verdict", verdict=str, gate=str, registered_version=int, reason=str, report=str):
    """Post the run's verdict, its reason and the report's location to a webhook; also when the run failed.

    Args:
        notify_webhook: the webhook URL (Slack-compatible JSON {"text": ...}); '' = only log the verdict.
        registry_root: the registry whose candidates log holds this run's verdict.
        model_name: the model's name in the registry.
        run_id: the pipeline run, as the preflight step recorded it.
        status: the final state of the steps this exit handler watches (set by KFP).
        verdict_metrics: the gate metric with its interval bounds (<metric>, <metric>_low, <metric>_high),
            blessed (1/0) and registered_version (0 = none), for comparing scheduled runs.

    Returns:
        verdict: BLESSED, NOT BLESSED, FAILED or UNKNOWN (succeeded without a record in the registry).
        gate: the gate metric with its interval, e.g. 'gauc 0.889 [0.854, 0.920]'; '' when the run
            did not get that far.
        registered_version: the version this run registered; 0 = none.
        reason: why (the gate's reason, or the failing step's message).
        report: where the evaluation report is ('' = none).
    """
    from collections import namedtuple

    from searchtune import logs
    from searchtune.steps import notify as step

    with logs.component_step("notify"):
        error = step.failure_reason(status.error_message or "") if status.state != step.SUCCEEDED else ""
        result = step.notify(notify_webhook, registry_root, model_name, run_id, status.state, error)
        if result.value is not None:
            verdict_metrics.log_metric(result.gate_metric, result.value)
            for suffix, bound in (("_low", result.low), ("_high", result.high)):
                if bound is not None:
                    verdict_metrics.log_metric(result.gate_metric + suffix, bound)
        verdict_metrics.log_metric("blessed", float(result.verdict == "BLESSED"))
        verdict_metrics.log_metric("registered_version", float(result.registered_version))
        outputs = namedtuple("Verdict", ["verdict", "gate", "registered_version", "reason", "report"])
        return outputs(result.verdict, result.gate, result.registered_version, result.reason, result.report)
