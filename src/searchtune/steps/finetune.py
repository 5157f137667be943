"""Fine-tune step: LoRA-train the relevance model on the tokenized splits, on one process or several (DDP).

The training split is memory-mapped (``ml.batching.TokenizedSplit.open``): a 20M-row split
starts training in seconds and costs its per-row lengths and labels in memory. Batches
come from a batch sampler (default: length-grouped, ``batch_size`` rows padded only to
their own longest row; with ``max_batch_tokens``: as many rows as fit that many padded
tokens) through a loader that collates ahead of the model (worker processes and pinned
memory on GPU, copied with non-blocking transfers). AdamW (fused on GPU) with linear
warm-up and decay, early stopping on validation ROC AUC, a fixed seed, bf16 autocast on
GPU. The loss stays on the device and is read every ``LOSS_LOG_STEPS`` steps and at the
end of an epoch, so the host never waits for the GPU inside an epoch.

Data parallel: under ``torchrun`` (``steps.finetune_launch``) each process trains the DDP
wrapper of the same model on its own share of every epoch's batches (``BatchOrder.shard``);
validation is scored in shares and gathered, so every rank takes the same early-stopping
decision. Rank 0 writes checkpoints and the model. Checkpoints (trainable weights,
optimizer, scheduler, position, every rank's random state) go to ``checkpoint_uri`` so a
preempted pod resumes where it stopped (``steps.training.checkpoints``).
"""

import dataclasses
import logging
import time
from pathlib import Path

import torch

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.ml import distributed, modeling
from searchtune.ml.batch_orders import TokenBudgetBatches
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
from searchtune.steps.training.checkpoints import Checkpointer, rng_state, set_rng_state

log = logging.getLogger(__name__)

LOSS_LOG_STEPS = 500


def batch_loss(model, batch: dict, targets: torch.Tensor, device: torch.device, precision: str = "auto") -> torch.Tensor:
    """The training objective on one collated batch already on ``device``: BCE of the logits against ``targets``."""
    with autocast(device, precision):
        logits = model(batch)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets)


def optimizer_step(loss: torch.Tensor, model, optimizer, scheduler) -> torch.Tensor:
    """One optimizer step: back-propagate ``loss``, clip the gradient norm to 1, step AdamW and the schedule.

    The one step of every training loop here (the fine-tune step, the benchmarks, the recipe
    experiments in bench/recipes). Returns the loss, detached and still on the device: reading
    it (``.item()``) makes the host wait for the device, so the fine-tune loop reads it rarely.
    """
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def build_optimizer(model: torch.nn.Module, config: TrainParams, total_steps: int, device: torch.device):
    """AdamW and its learning-rate schedule: linear warm-up over ``warmup_ratio`` of ``total_steps``, then linear decay.

    The encoder's trainable weights train at ``learning_rate`` with ``weight_decay``; the
    head's (the model's ``HEAD`` names) at ``head_learning_rate`` without decay.

    Returns:
        ``(optimizer, scheduler)``.
    """
    from transformers import get_linear_schedule_with_warmup

    head_names = set(getattr(model, "HEAD", ()))
    head = [p for n, p in model.named_parameters() if p.requires_grad and n in head_names]
    body = [p for n, p in model.named_parameters() if p.requires_grad and n not in head_names]
    # Fused AdamW updates every tensor in one kernel on GPU; on CPU the default keeps today's numbers.
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": config.learning_rate, "weight_decay": config.weight_decay},
         {"params": head, "lr": config.head_learning_rate, "weight_decay": 0.0}], **fused,
    )
    return optimizer, get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)


def trainable_state(model) -> dict:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


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
    sampler: LengthGroupedBatches | TokenBudgetBatches
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    group: distributed.Group
    forward: torch.nn.Module  # what a training step calls: ``model``, or its DDP wrapper

    def epoch_batches(self, epoch: int, skip: int = 0):
        """This rank's collated batches of one epoch, from batch ``skip`` on (the order depends only on seed and epoch)."""
        return loader(self.train, self.sampler.batches(epoch)[skip:], self.pad_id, self.device)

    def loss(self, batch: dict) -> torch.Tensor:
        """:func:`batch_loss` of a collated batch, on the 0/1 labels or, with ``graded_targets``, the graded targets."""
        batch = to_device(batch, self.device)
        targets = batch["target"] if self.config.graded_targets else batch["label"]
        return batch_loss(self.forward, batch, targets, self.device, self.config.precision)

    def validation_auc(self) -> float:
        """ROC AUC on the validation split; each rank scores its share and every rank gets the same number."""
        share = self.validation.take(self.group.shard_rows(len(self.validation))) if self.group.active else self.validation
        scores = predict_logits(self.model, share, self.pad_id, self.device, precision=self.config.precision)
        return auc_or_nan(self.validation.labels, self.group.gather_rows(scores, len(self.validation)))


def batch_sampler(config: TrainParams, lengths, group: distributed.Group):
    """By token budget when ``max_batch_tokens`` is set, else ``batch_size`` rows; this rank's share."""
    if config.max_batch_tokens:
        return TokenBudgetBatches(lengths, config.max_batch_tokens, config.seed, group.rank, group.world_size)
    return LengthGroupedBatches(lengths, config.batch_size, config.seed, group.rank, group.world_size)


def prepare(tokenized_dir: str, config: TrainParams, group: distributed.Group | None = None, init_dir: str = "") -> Training:
    """Open the tokenized splits and build the model, optimizer, scheduler and batch sampler.

    Args:
        group: this process's place among the data-parallel ranks (default: one process).
        init_dir: a saved model to continue from (a warm start); '' = the base model with fresh adapters.

    Raises:
        SearchtuneError: the data was tokenized for another architecture, or is missing.
    """
    group = group or distributed.single(pick_device())
    torch.manual_seed(config.seed)
    device = group.device
    base = modeling.resolve_base_model(config.base_model)
    tokenized = Path(tokenized_dir)
    token_stats = records.TokenizeStats.read(tokenized_dir)
    if token_stats.architecture != config.architecture:
        raise SearchtuneError(f"data was tokenized for {token_stats.architecture}, training asks for {config.architecture}")
    tokenizer = modeling.load_tokenizer(str(tokenized / records.TOKENIZER_DIR))
    train = TokenizedSplit.open(tokenized / "train", config.architecture, config.max_train_rows, config.seed)
    validation = TokenizedSplit.open(tokenized / "validation", config.architecture)
    model = modeling.build_model(config, base, init_from=init_dir).to(device)
    if group.active:
        torch.manual_seed(config.seed + group.rank)  # same initial weights on every rank, different dropout masks
    trainable, total = modeling.count_parameters(model)
    log.info("training %s on %s (%s, %d process(es)): %d train rows, %d validation rows, %d/%d parameters trainable (%.2f%%)",
             config.architecture, base, device, group.world_size, len(train), len(validation), trainable, total,
             100 * trainable / total)
    sampler = batch_sampler(config, train.lengths, group)
    optimizer, scheduler = build_optimizer(model, config, sampler.steps(config.epochs), device)
    return Training(config, device, base, tokenizer, tokenizer.pad_token_id or 0, token_stats.max_length, train, validation,
                    sampler, model, optimizer, scheduler, group, group.wrap(model))


def finetune(tokenized_dir: str, output_dir: str, config: TrainParams | None = None, checkpoint_uri: str = "",
             group: distributed.Group | None = None, warm_start: records.WarmStart | None = None,
             init_dir: str = "") -> records.ModelRecord:
    """Run the fine-tune step (on this process; ``steps.finetune_launch.run`` starts several).

    Args:
        tokenized_dir: output of the tokenize step (its tokenizer and tokenized splits).
        output_dir: local directory for the adapter, head, tokenizer and metrics (written by rank 0).
        config: the training parameters (defaults: those of ``searchtune run``).
        checkpoint_uri: where to checkpoint and resume from ('' = no checkpoints).
        group: this process's data-parallel group (``ml.distributed.start``); default one process.
        warm_start: the registered version training continues from (recorded with the model).
        init_dir: that version's files (``steps.training.warm_start.fetch``); '' = start from the base model.

    Returns:
        The model record written to ``searchtune_model.json`` (base-model reference,
        training parameters, per-epoch metrics, best epoch).
    """
    config = config or TrainParams()
    run = prepare(tokenized_dir, config, group, init_dir)
    model, group = run.model, run.group
    checkpointer = Checkpointer(checkpoint_uri)
    history, best_auc, best_state, best_epoch, start_epoch, start_step, bad_epochs = [], -1.0, None, 0, 0, 0, 0
    resume_rng = None
    state = checkpointer.load(group.world_size)
    if state is not None:
        model.load_state_dict(state["model"], strict=False)
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        history, best_auc, best_state, best_epoch = state["history"], state["best_auc"], state["best_state"], state["best_epoch"]
        start_epoch, start_step, bad_epochs = state["epoch"], state["step_in_epoch"], state["bad_epochs"]
        resume_rng = state["rng"][group.rank] if "rng" in state else None

    def checkpoint(epoch: int, step_in_epoch: int) -> None:
        if not checkpointer.uri:
            return
        rngs = group.gather_objects(rng_state(run.device))  # every rank takes part; rank 0 writes
        if group.is_main:
            checkpointer.save({
                "model": trainable_state(model), "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                "history": history, "best_auc": best_auc, "best_state": best_state, "best_epoch": best_epoch,
                "epoch": epoch, "step_in_epoch": step_in_epoch, "bad_epochs": bad_epochs,
                "world_size": group.world_size, "rng": rngs,
            })

    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        if bad_epochs >= config.patience:
            break
        run.forward.train()
        skip = start_step if epoch == start_epoch else 0  # a resumed run skips exactly the batches it did
        epoch_start, seen, real_tokens, padded_tokens = time.perf_counter(), 0, 0, 0
        loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
        epoch_loader = run.epoch_batches(epoch, skip)
        steps_per_epoch = skip + len(epoch_loader)
        batches = iter(epoch_loader)  # draws its seed from the global generator, as the lost run did at this epoch's start
        if resume_rng is not None:
            set_rng_state(resume_rng, run.device)  # so the resumed steps get the lost run's dropout masks
            resume_rng = None
        if group.is_main:
            batches = track(batches, total=len(epoch_loader), what=f"epoch {epoch + 1}/{config.epochs}", unit="batches")
        for step, batch in enumerate(batches, start=skip):
            rows = len(batch["label"])
            loss_sum += optimizer_step(run.loss(batch), run.forward, run.optimizer, run.scheduler) * rows
            seen += rows
            real_tokens += sum(int(batch[k].sum()) for k in batch if k.endswith("_mask"))
            padded_tokens += sum(batch[k].numel() for k in batch if k.endswith("_mask"))
            if (step + 1) % LOSS_LOG_STEPS == 0:
                log.info("epoch %d step %d/%d: mean loss %.4f (rank %d)", epoch + 1, step + 1, steps_per_epoch,
                         loss_sum.item() / seen, group.rank)
            if config.checkpoint_every_steps and (step + 1) % config.checkpoint_every_steps == 0 and step + 1 < steps_per_epoch:
                checkpoint(epoch, step + 1)
        seen, loss_total, real_tokens, padded_tokens = group.sum(seen, loss_sum, real_tokens, padded_tokens)
        epoch_seconds = time.perf_counter() - epoch_start  # after the sum, which waited for the last step
        val_auc = run.validation_auc()
        record = {
            "epoch": epoch + 1, "train_loss": round(loss_total / max(seen, 1), 5), "validation_auc": round(val_auc, 5),
            "examples_per_second": round(seen / epoch_seconds, 1), "seconds": round(epoch_seconds, 1),
            "padding_efficiency": round(real_tokens / max(padded_tokens, 1), 4),
        }
        history.append(record)
        log.info("epoch %d done (%d rows on %d process(es)): %s", epoch + 1, seen, group.world_size, record)
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
        base_model=records.BaseModelRef(**modeling.base_model_reference(run.base, bundled=not config.base_model)),
        max_length=run.max_length,
        lora_r=config.lora_r,
        training=config.model_dump(),
        warm_start=warm_start,
        device=run.device.type,
        train_rows=len(run.train),
        epochs=history,
        best_epoch=best_epoch,
        best_validation_auc=round(best_auc, 5),
        training_seconds=round(time.perf_counter() - started, 1),
    )
    if group.is_main:
        modeling.save_model(model.cpu(), run.tokenizer, output_dir, record)
        log.info("wrote model to %s: best epoch %d, validation AUC %.4f", output_dir, best_epoch, best_auc)
    group.barrier()  # no rank reports success before the model is written
    return record
