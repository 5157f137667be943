"""KFP component for the register step; the logic is ``searchtune.register.register_model``."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from searchtune.orchestration.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(
    model: Input[Model],
    splits: Input[Dataset],
    evaluation: Input[Artifact],
    registry_root: str,
    model_name: str,
    parameters_json: str,
    run_id: str,
    registration: Output[Artifact],
) -> int:
    """Store the blessed model as a new registry version and move ``production`` to it.

    Args:
        model: output of the fine-tune step (adapter/, tokenizer/, searchtune_model.json, ...).
        splits: output of the ingest step (train.parquet for the drift reference, stats.json).
        evaluation: output of the evaluate step (evaluation.json, blessing.json).
        registry_root: registry root, a local folder or gs://bucket/prefix.
        model_name: the model's name in the registry.
        parameters_json: the run's parameters as a JSON object, recorded in the lineage.
        run_id: the pipeline run's id (dsl.PIPELINE_JOB_NAME_PLACEHOLDER).
        registration: folder holding registration.json, the outcome
            {version, promoted, reason, alias_before, alias_after, registry_uri, model}.

    Returns:
        The new version number.
    """
    import json
    import os

    from searchtune import logs
    from searchtune.errors import SearchtuneError
    from searchtune.steps.register import register_model, write_outcome

    with logs.component_step("register"):
        try:
            parameters = json.loads(parameters_json or "{}")
        except json.JSONDecodeError as error:
            raise SearchtuneError(f"parameters_json is not valid JSON: {error}") from None
        outcome = register_model(registry_root, model_name, model.path, splits.path, evaluation.path, run_id, parameters)
        os.makedirs(registration.path, exist_ok=True)
        write_outcome(outcome, os.path.join(registration.path, "registration.json"))
        registration.metadata.update(outcome)
        return int(outcome["version"])
