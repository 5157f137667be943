"""KFP component for the register step; the logic is ``searchtune.steps.register.register_model``."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from searchtune.orchestration.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(
    model: Input[Model],
    splits: Input[Dataset],
    evaluation: Input[Artifact],
    run: Input[Artifact],
    product_index: Input[Artifact],
    registry_root: str,
    model_name: str,
    registration: Output[Artifact],
) -> int:
    """Store the blessed model as a new registry version and move ``production`` to it.

    Args:
        model: output of the fine-tune step (adapter/, tokenizer/, searchtune_model.json, ...).
        splits: output of the ingest step (train.parquet for the drift reference, stats.json).
        evaluation: output of the evaluate step (evaluation.json, blessing.json).
        run: output of the preflight step (run.json: run id, every parameter, the input files).
        product_index: output of the index step (index.json, index.faiss, ids.parquet), stored as
            the version's index/ for `searchtune serve`.
        registry_root: registry root, a local folder or gs://bucket/prefix.
        model_name: the model's name in the registry.
        registration: folder holding registration.json, the outcome
            {version, promoted, reason, alias_before, alias_after, registry_uri, model}.

    Returns:
        The new version number.
    """
    from searchtune import logs
    from searchtune.steps.register import register_model

    with logs.component_step("register"):
        outcome = register_model(registry_root, model_name, model.path, splits.path, evaluation.path, run.path,
                                 index_dir=product_index.path)
        outcome.write(registration.path)
        registration.metadata.update(outcome.model_dump())
        return outcome.version
