"""KFP component for the fine-tune step; the logic is ``searchtune.steps.finetune.finetune``.

It runs in the GPU image; the pipeline requests the accelerator (see
``searchtune.orchestration.cluster``). With more than one GPU in the pod (or
``processes_per_node`` > 1) the step runs under torchrun, one DDP process per GPU
(``searchtune.steps.finetune_launch``). Compiled with ``--finetune-nodes N`` it starts a
TrainJob or PyTorchJob on N nodes instead, waits for it and takes its model
(``searchtune.orchestration.training_job``).
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from searchtune.orchestration.images import GPU_IMAGE
from searchtune.params import TrainParams, documented


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
@documented(
    "LoRA-fine-tune the relevance model, with early stopping on validation AUC.",
    TrainParams,
    tokenized="output of the tokenize step.",
    registry_root="the registry init_from's version is fetched from.",
    model_name="the model init_from's version belongs to.",
    checkpoint_root="where to checkpoint (local or gs://); '' = next to the model output when that is on GCS "
                    "(so a retried pod resumes), otherwise no checkpoints.",
    model="adapter (safetensors), head, tokenizer and searchtune_model.json.",
    metrics="validation AUC, epochs run, throughput.",
)
def finetune(
    tokenized: Input[Dataset],
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
    registry_root: str,
    model_name: str,
    checkpoint_root: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    import hashlib

    from searchtune import logs, params
    from searchtune.io import storage
    from searchtune.orchestration import training_job
    from searchtune.steps import finetune_launch

    with logs.component_step("finetune"):
        config = params.parse(params.TrainParams, params.select(params.TrainParams, locals()))
        if checkpoint_root:
            # The artifact URI is the same for every retry of this task and differs between runs, also
            # between runs of the same display name (a schedule's): a retry resumes, a new run never does.
            # Not the run's name: an input would enter the task's cache key, and no later run could reuse the model.
            task_key = hashlib.sha256(model.uri.encode()).hexdigest()[:12]
            checkpoint_uri = storage.join(checkpoint_root, f"run-{task_key}")
        else:
            checkpoint_uri = model.uri + "-checkpoint" if storage.is_gcs(model.uri) else ""
        job = training_job.spec_from_environment()  # set by `searchtune compile --finetune-nodes N`
        if job is None:
            record = finetune_launch.run(tokenized.path, model.path, config, checkpoint_uri=checkpoint_uri,
                                         registry_root=registry_root, model_name=model_name)
        else:
            record = training_job.train(job, training_job.KubernetesJobs(job.kind, training_job.current_namespace()),
                                        tokenized_uri=tokenized.uri, model_uri=model.uri,
                                        model_dir=model.path, config=config, checkpoint_uri=checkpoint_uri,
                                        registry_root=registry_root, model_name=model_name)
        model.metadata.update({"architecture": record.architecture, "base_model": record.base_model.name_or_path,
                               "best_validation_auc": record.best_validation_auc,
                               "init_version": record.warm_start.version if record.warm_start else 0})
        metrics.log_metric("best_validation_auc", record.best_validation_auc)
        metrics.log_metric("best_epoch", record.best_epoch)
        metrics.log_metric("epochs_run", len(record.epochs))
        metrics.log_metric("training_seconds", record.training_seconds)
        metrics.log_metric("examples_per_second", record.epochs[-1].examples_per_second)
