"""Training checkpoints: where they are, what they hold, and the random state that makes a resume exact.

A checkpoint holds the trainable weights, optimizer, scheduler, the position (epoch and
step within it), the history, the best state, and every rank's random-number state (the
dropout masks), so a resumed run makes the very steps the lost one would have made.
Rank 0 writes it; every rank reads it.
"""

import io
import logging

import torch

from searchtune.errors import SearchtuneError
from searchtune.io import storage

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves and restores training state at ``uri`` (local path or gs://); '' disables it."""

    def __init__(self, uri: str):
        self.uri = storage.join(uri, "checkpoint.pt") if uri else ""

    def load(self, world_size: int = 1) -> dict | None:
        """The saved state, or None when there is none.

        Raises:
            SearchtuneError: the checkpoint was written by another number of processes (its
                position counts the steps of each rank, which depend on that number).
        """
        if not self.uri or not storage.exists(self.uri):
            return None
        state = torch.load(io.BytesIO(storage.read_bytes(self.uri)), map_location="cpu", weights_only=False)
        written_by = state.get("world_size", 1)
        if written_by != world_size:
            raise SearchtuneError(f"checkpoint {self.uri} was written by {written_by} training process(es), this run has "
                                  f"{world_size}: resume with {written_by} or remove the checkpoint")
        log.info("resuming from checkpoint %s: epoch %d, step %d", self.uri, state["epoch"], state["step_in_epoch"])
        return state

    def save(self, state: dict) -> None:
        if not self.uri:
            return
        buffer = io.BytesIO()
        torch.save(state, buffer)
        storage.write_bytes(self.uri, buffer.getvalue())
        log.info("checkpoint saved to %s (epoch %d, step %d)", self.uri, state["epoch"], state["step_in_epoch"])


def rng_state(device: torch.device) -> dict:
    """This process's random state (CPU, and the GPU's when training on one)."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
