"""Preflight step: everything that can be checked before any data is read or any GPU is held.

It runs first and is never cached. It validates every run parameter (ranges, choices,
the rules between them), proves the registry reachable and writable, checks that the
production version's files are all there with their sizes (the champion the evaluation
compares against; no checksums, so it costs one listing), resolves the base model and
checks that the LoRA targets exist in it, resolves ``init_from`` (the version a warm start
continues, ``steps.training.warm_start``), and lists the input files with their versions. A bad run
stops here in seconds with one line, not after training.

The listing has a second job: ``data_version``, a digest of every input file's name,
size and version (GCS generation or local mtime), is the input that keys the ingest
step's cache. KFP caches a step on its arguments, and ``data`` is only a location: a
scheduled run whose glob now matches new files must not replay last week's data, and a
run over unchanged files need not ingest them again.
"""

import hashlib
import logging
import os

from searchtune import records
from searchtune.data import sample_data
from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.ml import modeling
from searchtune.params import RunParameters, TrainParams
from searchtune.registry import ModelRegistry
from searchtune.steps import index
from searchtune.steps.register import code_version
from searchtune.steps.training import warm_start

log = logging.getLogger(__name__)


def snapshot(data: str) -> list[records.DataFile]:
    """Every file under ``data`` with its size and version (no content is read)."""
    files = []
    for uri in storage.expand(data):
        size, version = storage.stat(uri)
        files.append(records.DataFile(uri=uri, size=size, version=version))
    return files


def data_version(files: list[records.DataFile]) -> str:
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.uri):
        digest.update(f"{file.uri}\0{file.size}\0{file.version}\n".encode())
    return digest.hexdigest()


def check_base_model(params: TrainParams) -> str:
    """Resolve the base model, load its tokenizer and configuration, and check the LoRA targets.

    The model is instantiated on torch's meta device: module names without the weights.

    Returns:
        The resolved name or path.
    """
    import torch
    from transformers import AutoConfig, AutoModel

    base = modeling.resolve_base_model(params.base_model)
    modeling.load_tokenizer(base)
    if params.lora_r == 0:
        return base
    try:
        config = AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as error:
        raise SearchtuneError(f"cannot load the configuration of base model '{base}': {str(error).splitlines()[0]}") from None
    with torch.device("meta"):
        names = {name.rsplit(".", 1)[-1] for name, _ in AutoModel.from_config(config).named_modules()}
    missing = [target for target in params.lora_target_list if target not in names]
    if missing:
        raise SearchtuneError(f"lora_targets {', '.join(missing)} name no module of base model '{base}'; "
                              f"its linear layers include {', '.join(sorted(n for n in names if n)[:12])}")
    return base


def check_registry(registry_root: str, model_name: str) -> None:
    """The registry is writable, its aliases point at versions, and production's files are all there.

    A production version with a missing or truncated file would only be found after
    training, when the evaluation fails closed on a champion it cannot fetch.
    """
    registry = ModelRegistry(registry_root)
    registry.check_writable(model_name)
    production = registry.check_production(model_name)
    if production is not None:
        log.info("preflight: production is %s v%d, %d file(s) present with their sizes", model_name,
                 production["version"], len(production["files"]))


def preflight(params: RunParameters, run_id: str, output_dir: str) -> records.RunRecord:
    """Run the preflight step.

    Args:
        params: every parameter of the run (already validated by construction).
        run_id: the pipeline run's id.
        output_dir: local folder for ``run.json``.

    Returns:
        The run record, also written to ``run.json``.

    Raises:
        SearchtuneError: the registry is missing, unreachable or read-only, the production
            version lacks a file or has one of another size, the base model
            or a LoRA target cannot be found, the data location holds no file, or
            ``init_from`` names no version or one this run cannot continue.
    """
    if not params.registry_root:
        raise SearchtuneError("registry_root is empty: give the model registry, a local folder or gs://bucket/prefix")
    # The inputs first: a run that fails on its data or base model leaves a new registry uncreated.
    files = snapshot(params.data or sample_data.default_sample_path())
    if params.catalog:  # a catalog the index step cannot read fails here, not after training
        index.check_catalog(params.catalog, params.catalog_id_column, params.catalog_text_columns or params.text_columns)
    base = check_base_model(params.group(TrainParams))
    # With the model name, a broken or dangling production alias is caught here too, not at registration.
    # Read-only, so a bad init_from leaves a registry that does not exist yet uncreated too.
    warm = warm_start.resolve(params.registry_root, params.model_name, params.group(TrainParams), base)
    check_registry(params.registry_root, params.model_name)
    record = records.RunRecord(
        run_id=run_id, started_at=records.now(), parameters=params.model_dump(), data_files=files,
        data_version=data_version(files), base_model=base, registry_root=params.registry_root, code=code_version(),
        warm_start=warm,
    )
    record.write(output_dir)
    log.info("preflight: %d parameters valid; registry %s writable; base model %s; %d input file(s), %.1f MB, version %s",
             len(params.model_fields), params.registry_root, os.path.basename(base.rstrip("/")) or base, len(files),
             sum(f.size for f in files) / 1e6, record.data_version[:12])
    return record
