"""Fine-tune step: LoRA-train the relevance model on the tokenized splits.

The training split is memory-mapped (``ml.batching.TokenizedSplit.open``): a 20M-row split
starts training in seconds and costs its per-row lengths and labels in memory. Batches
come from a batch sampler (default: length-grouped, so each batch is padded only to its
own longest row and rows of similar length are batched together) through a loader that
collates ahead of the model. AdamW with linear warm-up and decay, early stopping on
validation ROC AUC, a fixed seed, bf16 autocast on GPU. Checkpoints (trainable weights,
optimizer, scheduler, position) go to ``checkpoint_uri`` so a preempted pod resumes
where it stopped.
"""

import dataclasses
import io
import logging
import math
import time
from pathlib import Path

import torch

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.ml import modeling
from searchtune.ml.batching import (
    LengthGroupedBatches,
    TokenizedSplit,
    auc_or_nan,
    autocast,
    loader,
    pick_device,
    predict_logits,
    to_device,
)
from searchtune.params import TrainParams
from searchtune.progress import track

log = logging.getLogger(__name__)

LOSS_LOG_STEPS = 500


def training_step(model, batch: dict, targets: torch.Tensor, optimizer, scheduler, device: torch.device,
                  precision: str = "auto") -> float:
    """One optimizer step on one batch (BCE on the logits); returns the batch loss."""
    with autocast(device, precision):
        logits = model(batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def trainable_state(model) -> dict:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


class Checkpointer:
    """Saves and restores training state at ``uri`` (local path or gs://); '' disables it."""

    def __init__(self, uri: str):
        self.uri = storage.join(uri, "checkpoint.pt") if uri else ""

    def load(self) -> dict | None:
        if not self.uri or not storage.exists(self.uri):
            return None
        state = torch.load(io.BytesIO(storage.read_bytes(self.uri)), map_location="cpu", weights_only=False)
        log.info("resuming from checkpoint %s: epoch %d, step %d", self.uri, state["epoch"], state["step_in_epoch"])
        return state

    def save(self, state: dict) -> None:
        if not self.uri:
            return
        buffer = io.BytesIO()
        torch.save(state, buffer)
        storage.write_bytes(self.uri, buffer.getvalue())
        log.info("checkpoint saved to %s (epoch %d, step %d)", self.uri, state["epoch"], state["step_in_epoch"])


@dataclasses.dataclass
class Training:
    """Everything a training loop needs, built by :func:`prepare`."""

    config: TrainParams
    device: torch.device
    base: str
    tokenizer: object
    pad_id: int
    max_length: int
    train: TokenizedSplit
    validation: TokenizedSplit
    sampler: LengthGroupedBatches
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object

    def epoch_batches(self, epoch: int, skip: int = 0):
        """The collated batches of one epoch, from batch ``skip`` on (the order depends only on seed and epoch)."""
        return loader(self.train, self.sampler.batches(epoch)[skip:], self.pad_id, self.device)

    def step(self, batch: dict) -> float:
        """One optimizer step on a collated batch; returns its loss."""
        batch = to_device(batch, self.device)
        targets = batch["target"] if self.config.graded_targets else batch["label"]
        return training_step(self.model, batch, targets, self.optimizer, self.scheduler, self.device, self.config.precision)


def prepare(tokenized_dir: str, config: TrainParams) -> Training:
    """Open the tokenized splits and build the model, optimizer, scheduler and batch sampler.

    Raises:
        SearchtuneError: the data was tokenized for another architecture, or is missing.
    """
    torch.manual_seed(config.seed)
    device = pick_device()
    base = modeling.resolve_base_model(config.base_model)
    tokenized = Path(tokenized_dir)
    token_stats = records.TokenizeStats.read(tokenized_dir)
    if token_stats.architecture != config.architecture:
        raise SearchtuneError(f"data was tokenized for {token_stats.architecture}, training asks for {config.architecture}")
    tokenizer = modeling.load_tokenizer(str(tokenized / records.TOKENIZER_DIR))
    train = TokenizedSplit.open(tokenized / "train", config.architecture, config.max_train_rows, config.seed)
    validation = TokenizedSplit.open(tokenized / "validation", config.architecture)
    model = modeling.build_model(config, base).to(device)
    trainable, total = modeling.count_parameters(model)
    log.info("training %s on %s (%s): %d train rows, %d validation rows, %d/%d parameters trainable (%.2f%%)",
             config.architecture, base, device, len(train), len(validation), trainable, total, 100 * trainable / total)
    head = [p for n, p in model.named_parameters() if p.requires_grad and n in modeling.HEAD_PARAMETERS]
    body = [p for n, p in model.named_parameters() if p.requires_grad and n not in modeling.HEAD_PARAMETERS]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": config.learning_rate, "weight_decay": config.weight_decay},
         {"params": head, "lr": config.head_learning_rate, "weight_decay": 0.0}],
    )
    sampler = LengthGroupedBatches(train.lengths, config.batch_size, config.seed)
    total_steps = sampler.steps(config.epochs)
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    return Training(config, device, base, tokenizer, tokenizer.pad_token_id or 0, token_stats.max_length, train, validation,
                    sampler, model, optimizer, scheduler)


def finetune(tokenized_dir: str, output_dir: str, config: TrainParams | None = None, checkpoint_uri: str = "") -> records.ModelRecord:
    """Run the fine-tune step.

    Args:
        tokenized_dir: output of the tokenize step (its tokenizer and tokenized splits).
        output_dir: local directory for the adapter, head, tokenizer and metrics.
        config: the training parameters (defaults: those of ``searchtune run``).
        checkpoint_uri: where to checkpoint and resume from ('' = no checkpoints).

    Returns:
        The model record written to ``searchtune_model.json`` (base-model reference,
        training parameters, per-epoch metrics, best epoch).
    """
    config = config or TrainParams()
    run = prepare(tokenized_dir, config)
    model = run.model
    checkpointer = Checkpointer(checkpoint_uri)
    history, best_auc, best_state, best_epoch, start_epoch, start_step, bad_epochs = [], -1.0, None, 0, 0, 0, 0
    state = checkpointer.load()
    if state is not None:
        model.load_state_dict(state["model"], strict=False)
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        history, best_auc, best_state, best_epoch = state["history"], state["best_auc"], state["best_state"], state["best_epoch"]
        start_epoch, start_step, bad_epochs = state["epoch"], state["step_in_epoch"], state["bad_epochs"]

    def checkpoint(epoch: int, step_in_epoch: int) -> None:
        checkpointer.save({
            "model": trainable_state(model), "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "history": history, "best_auc": best_auc, "best_state": best_state, "best_epoch": best_epoch,
            "epoch": epoch, "step_in_epoch": step_in_epoch, "bad_epochs": bad_epochs,
        })

    started = time.perf_counter()
    steps_per_epoch = math.ceil(len(run.train) / config.batch_size)
    for epoch in range(start_epoch, config.epochs):
        if bad_epochs >= config.patience:
            break
        model.train()
        skip = start_step if epoch == start_epoch else 0  # a resumed run skips exactly the batches it did
        epoch_start, seen, real_tokens, padded_tokens, loss_sum = time.perf_counter(), 0, 0, 0, 0.0
        batches = run.epoch_batches(epoch, skip)
        for step, batch in enumerate(track(batches, total=len(batches), what=f"epoch {epoch + 1}/{config.epochs}", unit="batches"),
                                     start=skip):
            rows = len(batch["label"])
            loss = run.step(batch)
            seen += rows
            loss_sum += loss * rows
            real_tokens += sum(int(batch[k].sum()) for k in batch if k.endswith("_mask"))
            padded_tokens += sum(batch[k].numel() for k in batch if k.endswith("_mask"))
            if (step + 1) % LOSS_LOG_STEPS == 0:
                log.info("epoch %d step %d/%d: mean loss %.4f", epoch + 1, step + 1, steps_per_epoch, loss_sum / seen)
            if config.checkpoint_every_steps and (step + 1) % config.checkpoint_every_steps == 0 and step + 1 < steps_per_epoch:
                checkpoint(epoch, step + 1)
        epoch_seconds = time.perf_counter() - epoch_start
        val_auc = auc_or_nan(run.validation.labels, predict_logits(model, run.validation, run.pad_id, run.device,
                                                                   precision=config.precision))
        record = {
            "epoch": epoch + 1, "train_loss": round(loss_sum / max(seen, 1), 5), "validation_auc": round(val_auc, 5),
            "examples_per_second": round(seen / epoch_seconds, 1), "seconds": round(epoch_seconds, 1),
            "padding_efficiency": round(real_tokens / max(padded_tokens, 1), 4),
        }
        history.append(record)
        log.info("epoch %d done: %s", epoch + 1, record)
        if val_auc > best_auc:
            best_auc, best_state, best_epoch, bad_epochs = val_auc, trainable_state(model), epoch + 1, 0
        else:
            bad_epochs += 1
            log.info("validation AUC did not improve (best %.4f at epoch %d)", best_auc, best_epoch)
        checkpoint(epoch + 1, 0)
        if bad_epochs >= config.patience:
            log.info("early stopping after epoch %d", epoch + 1)
            break

    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    record = records.ModelRecord(
        architecture=config.architecture,
        base_model=records.BaseModelRef(**modeling.base_model_reference(run.base), bundled=not config.base_model),
        max_length=run.max_length,
        lora_r=config.lora_r,
        training=config.model_dump(),
        device=run.device.type,
        train_rows=len(run.train),
        epochs=history,
        best_epoch=best_epoch,
        best_validation_auc=round(best_auc, 5),
        training_seconds=round(time.perf_counter() - started, 1),
    )
    modeling.save_model(model.cpu(), run.tokenizer, output_dir, record)
    log.info("wrote model to %s: best epoch %d, validation AUC %.4f", output_dir, best_epoch, best_auc)
    return record
