"""Champion step (TFX's resolver): hand the production model to the evaluation as an input.

The evaluation then is a function of its inputs: it never opens the registry. This step
runs right before it and is never cached, because the registry's ``production`` alias
is state outside the pipeline. Its output folder holds ``champion.json`` and, when a
production model exists, the version's files (checksums verified) under ``model/``,
including the sample of its training data that the drift report compares against.

A production model that exists but cannot be fetched is not an error here: the record
says why, and the evaluation fails closed on it (a candidate is never blessed against a
champion nobody could look at).
"""

import logging
import os

import pyarrow.parquet as pq

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.registry import ModelRegistry

log = logging.getLogger(__name__)


def resolve_champion(registry_root: str, model_name: str, output_dir: str) -> records.ChampionRecord:
    """Fetch the registry's production model (if any) into ``output_dir``.

    Args:
        registry_root: the registry (local folder or gs://bucket/prefix).
        model_name: the model's name in the registry.
        output_dir: local folder for ``champion.json`` and ``model/``.

    Returns:
        The champion record, also written to ``champion.json``.

    Raises:
        SearchtuneError: a local registry folder that is not there. Preflight has made or
            found it, so this step cannot see it (a container without the folder mounted):
            reading that as "no production model yet" would drop the non-regression check.
    """
    if "://" not in registry_root and not os.path.isdir(registry_root):
        raise SearchtuneError(f"registry {registry_root} is not there, though preflight checked it: this step cannot see it "
                              "(a container without the folder mounted?), so it cannot tell whether a production model exists")
    record = records.ChampionRecord(found=False, model_name=model_name, registry_root=registry_root)
    try:
        registry = ModelRegistry(registry_root)
        production = registry.production(model_name)
        if production is not None:
            record = record.model_copy(update={
                "found": True, "version": production["version"], "uri": production["uri"],
                "run_id": production.get("run_id"), "recorded_auc": production.get("auc"),
            })
            model_dir = registry.fetch(model_name, production["version"], os.path.join(output_dir, records.CHAMPION_MODEL_DIR))
            reference = os.path.join(model_dir, records.REFERENCE_SAMPLE_FILE)
            if os.path.exists(reference):
                record = record.model_copy(update={"reference_rows": pq.read_metadata(reference).num_rows})
    except SearchtuneError as error:
        # Not knowing whether there is a production model is a reason to fail closed, later.
        record = record.model_copy(update={"found": True, "error": str(error)})
    except Exception as error:  # noqa: BLE001 - whatever broke, the evaluation must fail closed and say why
        record = record.model_copy(update={"found": True, "error": f"{type(error).__name__}: {error}"})
    record.write(output_dir)
    if record.error:
        log.error("production model of %s could not be fetched: %s", model_name, record.error)
    elif record.found:
        log.info("champion: %s v%d from %s (%d reference rows)", model_name, record.version, record.uri, record.reference_rows)
    else:
        log.info("champion: %s has no production model in %s yet", model_name, registry_root)
    return record


def champion_model_dir(champion_dir: str) -> str:
    """Where ``resolve_champion`` put the production model's files."""
    return os.path.join(champion_dir, records.CHAMPION_MODEL_DIR)
