"""KFP component for the fine-tune step; the logic is ``searchtune.finetune.finetune``.

It runs in the GPU image; the pipeline requests the accelerator (see searchtune.cluster).
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from searchtune.orchestration.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def finetune(
    tokenized: Input[Dataset],
    base_model: str,
    architecture: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    lora_r: int,
    patience: int,
    max_train_rows: int,
    seed: int,
    checkpoint_root: str,
    run_id: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """LoRA-fine-tune the relevance model, with early stopping on validation AUC.

    Args:
        tokenized: output of the tokenize step.
        base_model: Hugging Face model id or path; '' = the bundled all-MiniLM-L6-v2.
        architecture: bi-encoder (default) or cross-encoder.
        epochs: maximum number of epochs.
        batch_size: rows per optimizer step.
        learning_rate: peak AdamW learning rate of the LoRA weights.
        lora_r: LoRA rank (0 = full fine-tune).
        patience: epochs without validation AUC gain before stopping.
        max_train_rows: train on a sample of this many rows (0 = all).
        seed: random seed.
        checkpoint_root: where to checkpoint (local or gs://); '' = next to the model output
            when that is on GCS (so a retried pod resumes), otherwise no checkpoints.
        run_id: the pipeline run, names the checkpoint folder.
        model: adapter (safetensors), head, tokenizer and searchtune_model.json.
        metrics: validation AUC, epochs run, throughput.
    """
    from searchtune import logs
    from searchtune.io import storage
    from searchtune.steps import finetune as step

    with logs.component_step("finetune"):
        if checkpoint_root:
            checkpoint_uri = storage.join(checkpoint_root, run_id or "run")
        else:
            checkpoint_uri = model.uri + "-checkpoint" if storage.is_gcs(model.uri) else ""
        config = step.TrainConfig(
            architecture=architecture, base_model=base_model, epochs=epochs, batch_size=batch_size,
            learning_rate=learning_rate, lora_r=lora_r, patience=patience, max_train_rows=max_train_rows, seed=seed,
        )
        result = step.finetune(tokenized.path, model.path, config, checkpoint_uri=checkpoint_uri)
        model.metadata.update({"architecture": architecture, "base_model": result["base_model"]["name_or_path"],
                               "best_validation_auc": result["best_validation_auc"]})
        metrics.log_metric("best_validation_auc", result["best_validation_auc"])
        metrics.log_metric("best_epoch", result["best_epoch"])
        metrics.log_metric("epochs_run", len(result["epochs"]))
        metrics.log_metric("training_seconds", result["training_seconds"])
        metrics.log_metric("examples_per_second", result["epochs"][-1]["examples_per_second"])
