"""KFP component for the champion step; the logic is ``searchtune.steps.champion.resolve_champion``."""

from kfp import dsl
from kfp.dsl import Model, Output

from searchtune.orchestration.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def champion(registry_root: str, model_name: str, champion: Output[Model]):
    """Hand the registry's production model to the evaluation (TFX's resolver). Never cached.

    Args:
        registry_root: the model registry, a local folder or gs://bucket/prefix.
        model_name: the model's name in the registry.
        champion: champion.json (found or not, version, or why it could not be fetched) and
            the production version's files under model/.
    """
    from searchtune import logs
    from searchtune.steps.champion import resolve_champion

    with logs.component_step("champion"):
        record = resolve_champion(registry_root, model_name, champion.path)
        champion.metadata.update({"found": record.found, "version": record.version, "error": record.error})
