"""Warm start (``init_from``): which registered version a run continues training, and its files.

Preflight resolves the reference once (``production`` -> ``7``), before any work, and checks
that the version can be continued: same architecture, base model and LoRA settings. The
fine-tune step receives the resolved version, so its cache key names the exact weights it
started from, and fetches that version's files (checksums verified) once per node.

A scheduled run with ``init_from=production`` on a registry without a production model
yet (its first run) trains from the base model and says so; any other reference that does
not resolve is an error.
"""

import logging
import os

from pydantic import ValidationError

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.ml import modeling
from searchtune.params import TrainParams
from searchtune.registry import PRODUCTION, ModelRegistry

log = logging.getLogger(__name__)


def resolve(registry_root: str, model_name: str, params: TrainParams, base_model: str) -> records.WarmStart | None:
    """The version ``params.init_from`` names, checked to fit this run; None = train from the base model.

    Args:
        registry_root: the registry.
        model_name: the model whose versions ``init_from`` refers to.
        params: this run's training parameters.
        base_model: this run's resolved base model (``modeling.resolve_base_model``).

    Raises:
        SearchtuneError: the reference names no version, or the version differs from this run
            in architecture, base model or LoRA settings.
    """
    reference = params.init_from
    if not reference:
        return None
    registry = ModelRegistry(registry_root)
    if reference == PRODUCTION and registry.alias(model_name, PRODUCTION) is None:
        log.info("init_from production: %s has no production model yet, so training starts from the base model", model_name)
        return None
    try:
        version = registry.resolve(model_name, reference)
        saved = records.ModelRecord.model_validate_json(registry.read_file(model_name, version, records.ModelRecord.FILE))
    except SearchtuneError as error:
        raise SearchtuneError(f"init_from={reference!r}: {error}") from None
    except ValidationError as error:  # a record this version cannot read
        problem = error.errors()[0]
        raise SearchtuneError(f"init_from={reference!r}: {model_name} v{version}'s {records.ModelRecord.FILE} is not a "
                              f"model record this searchtune reads ({'.'.join(map(str, problem['loc']))}: {problem['msg']})") from None
    problems = modeling.warm_start_problems(saved, params, base_model)
    if problems:
        raise SearchtuneError(f"init_from={reference!r}: {model_name} v{version} cannot be continued by this run, it differs in "
                              + "; ".join(problems) + " (train from the base with init_from='' or use its settings)")
    log.info("init_from %s: training continues %s v%d", reference, model_name, version)
    return records.WarmStart(model_name=model_name, version=version, uri=registry.version_uri(model_name, version))


def fetch(registry_root: str, model_name: str, version: str, dest: str) -> tuple[records.WarmStart | None, str]:
    """Download the version fine-tuning starts from into ``dest`` (verified); ``(None, "")`` for none.

    Args:
        version: the resolved version (preflight's ``init_version``); '' = from the base model.
    """
    if not version:
        return None, ""
    if not registry_root:
        raise SearchtuneError(f"init_from={version!r} needs registry_root to fetch the version from")
    registry = ModelRegistry(registry_root)
    number = registry.resolve(model_name, version)
    if not (os.path.isdir(dest) and os.listdir(dest)):
        registry.fetch(model_name, number, dest)
    return records.WarmStart(model_name=model_name, version=number, uri=registry.version_uri(model_name, number)), dest
