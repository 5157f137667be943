"""KFP component for the preflight step; the logic is ``searchtune.steps.preflight.preflight``."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Output

from searchtune.orchestration.images import CPU_IMAGE
from searchtune.params import RunParameters, documented


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
@documented(
    "Check every parameter, the registry, the base model and the inputs before any work.",
    RunParameters,
    run_id="the pipeline run's id.",
    run="run.json: the run id, every parameter, the input files with their versions.",
    returns="data_version: a digest of the input files (names, sizes, versions) that keys the ingest step's cache; "
            "init_version: the registry version init_from resolved to ('' = train from the base model).",
)
def preflight(
    data: str,
    query_column: str,
    text_columns: str,
    label_column: str,
    positive_threshold: float,
    binary_labels: bool,
    label_min: float,
    label_max: float,
    max_reject_ratio: float,
    encoding: str,
    base_model: str,
    architecture: str,
    max_length: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    head_learning_rate: float,
    weight_decay: float,
    warmup_ratio: float,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float,
    lora_targets: str,
    patience: int,
    max_train_rows: int,
    seed: int,
    graded_targets: bool,
    precision: str,
    checkpoint_every_steps: int,
    max_batch_tokens: int,
    processes_per_node: int,
    init_from: str,
    gate_metric: str,
    min_auc: float,
    require_beat_base: bool,
    require_beat_lexical: bool,
    max_auc_drop: float,
    require_improvement: bool,
    min_auc_gain: float,
    confidence: float,
    min_test_queries: int,
    bootstrap_resamples: int,
    catalog: str,
    catalog_id_column: str,
    catalog_text_columns: str,
    registry_root: str,
    model_name: str,
    checkpoint_root: str,
    run_id: str,
    run: Output[Artifact],
) -> NamedTuple("PreflightOutputs", data_version=str, init_version=str):
    from collections import namedtuple

    from searchtune import logs, params
    from searchtune.steps import preflight as step

    with logs.component_step("preflight"):
        values = params.select(params.RunParameters, locals())
        record = step.preflight(params.parse(params.RunParameters, values), run_id, run.path)
        run.metadata.update({"run_id": record.run_id, "data_version": record.data_version, "files": len(record.data_files)})
        outputs = namedtuple("PreflightOutputs", ["data_version", "init_version"])
        return outputs(record.data_version, str(record.warm_start.version) if record.warm_start else "")
