"""KFP component for the refusal step; the logic is ``searchtune.steps.register.record_refusal``."""

from kfp import dsl
from kfp.dsl import Artifact, Input

from searchtune.orchestration.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def record_refusal(evaluation: Input[Artifact], run: Input[Artifact], registry_root: str, model_name: str):
    """Log a candidate the gate refused in the registry's candidates log (the gate's else branch).

    Args:
        evaluation: output of the evaluate step (blessing.json: why it was refused).
        run: output of the preflight step (run.json: the run id).
        registry_root: the model registry, a local folder or gs://bucket/prefix.
        model_name: the model's name in the registry.
    """
    from searchtune import logs, records
    from searchtune.io import storage
    from searchtune.steps.register import record_refusal as step

    with logs.component_step("record_refusal"):
        # The URI, not the local path: on a cluster the path is a mount inside this pod only.
        step(registry_root, model_name, evaluation.path, run.path, report_uri=storage.join(evaluation.uri, records.REPORT_FILE))
