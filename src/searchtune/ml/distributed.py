"""Data parallelism with torch.distributed: the process group, the DDP wrapper, gathering results.

The trainer runs as one process per GPU under ``torchrun`` (or the Kubeflow Trainer /
PyTorchJob pods, which start ``torchrun`` themselves): torchrun sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` and the rendezvous; :func:`start` joins the group (NCCL
on GPU, gloo on CPU) and pins each process to its GPU. Without those variables
:func:`start` returns a one-process :class:`Group` and touches no process group, so a
plain ``searchtune run`` trains exactly as before.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import logging
import os

import numpy as np
import torch
import torch.distributed as dist

from searchtune.errors import SearchtuneError

log = logging.getLogger(__name__)

# A rank that waits longer than this for the others (a dead peer) fails instead of hanging the pod.
TIMEOUT = datetime.timedelta(minutes=30)


@dataclasses.dataclass(frozen=True)
class Group:
    """This process's place in the data-parallel group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, the model and the logs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training step calls: DDP over ``model`` when there are several ranks."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # The model's buffers (position and token-type ids) never change: no need to broadcast them every step
        # (the option's name changed in torch 2.12).
        known = inspect.signature(DistributedDataParallel).parameters
        no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in known else "broadcast_buffers": False}
        # static_graph: LoRA adapters outside the loss (the pooler's, with mean pooling) never get a gradient;
        # DDP learns that set on the first step instead of searching the graph after every backward.
        return DistributedDataParallel(model, device_ids=ids, output_device=self.device.index if ids else None,
                                       gradient_as_bucket_view=True, static_graph=True, **no_sync)

    def sum(self, *values: float | torch.Tensor) -> list[float]:
        """Each value summed over the ranks (one collective for all); the same list on every rank."""
        local = torch.stack([torch.as_tensor(v, dtype=torch.float64).to(self._comm_device).reshape(()) for v in values])
        if self.active:
            dist.all_reduce(local)
        return local.cpu().tolist()

    def gather_rows(self, shard: np.ndarray, total: int) -> np.ndarray:
        """The per-row values of every rank's :func:`shard_rows` share, back in row order (length ``total``)."""
        if not self.active:
            return shard
        per = -(-total // self.world_size)
        padded = torch.zeros(per, dtype=torch.float32, device=self._comm_device)
        padded[: len(shard)] = torch.from_numpy(np.ascontiguousarray(shard, dtype=np.float32)).to(self._comm_device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        # Rank r holds rows r, r + W, r + 2W, ...: position j of rank r is row j * W + r.
        return torch.stack(parts, dim=1).reshape(-1)[:total].cpu().numpy()

    def shard_rows(self, total: int) -> np.ndarray:
        """This rank's rows for work split between ranks (every ``world_size``-th row)."""
        return np.arange(self.rank, total, self.world_size)

    def gather_objects(self, value) -> list:
        """``value`` from every rank, in rank order (on every rank)."""
        if not self.active:
            return [value]
        out = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.is_initialized() and dist.get_backend() == "nccl" else torch.device("cpu")


def single(device: torch.device) -> Group:
    return Group(rank=0, world_size=1, local_rank=0, device=device)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start() -> Group:
    """Join the process group torchrun describes (NCCL on GPU, gloo on CPU); one process: no group.

    Raises:
        SearchtuneError: more processes on this node than GPUs, when training on GPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise SearchtuneError(f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()} "
                                  "(start at most one process per GPU)")
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world_size <= 1:
        return single(torch.device("cuda") if cuda else device)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if cuda else None)
    group = Group(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device)
    log.info("rank %d of %d (local rank %d) joined the %s process group on %s", group.rank, group.world_size,
             local_rank, backend, device)
    return group


def stop(group: Group) -> None:
    if group.active and dist.is_initialized():
        dist.destroy_process_group()


def processes_per_node(requested: int) -> int:
    """How many training processes to start on this node: ``requested``, or one per visible GPU (0).

    Raises:
        SearchtuneError: more processes than GPUs on a GPU node.
    """
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == 0:
        return max(gpus, 1)
    if gpus and requested > gpus:
        raise SearchtuneError(f"processes_per_node={requested}: this node has only {gpus} GPU(s)")
    return requested
