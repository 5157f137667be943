"""Start the fine-tune step on one process or, with torchrun, on several (data parallel).

``run`` is what the fine-tune component calls: with more than one process per node
(``processes_per_node``, by default one per visible GPU) it starts
``torchrun --standalone --nproc-per-node N -m searchtune.steps.finetune_launch ...`` and
waits for it; otherwise it trains in this process, exactly as before.

This module is also the entry point torchrun starts on each rank, and what a multi-node
job (Kubeflow Trainer TrainJob, PyTorchJob: ``manifests/training``) runs under its own
torchrun. Each rank joins the process group (``ml.distributed.start``), trains its share,
and leaves the group; rank 0 writes the model. ``--tokenized`` and ``--output`` may be
``gs://`` locations (a pod of a multi-node job has no KFP artifact mounted)::

    torchrun --nnodes 2 --nproc-per-node 8 ... -m searchtune.steps.finetune_launch \\
        --tokenized /data/tokenized --output /data/model --checkpoint-uri gs://b/ckpt \\
        --param max_batch_tokens=32768 --param epochs=3
"""

import argparse
import hashlib
import logging
import os
import subprocess
import sys
import tempfile

from searchtune import logs, params, records
from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.ml import distributed
from searchtune.params import TrainParams
from searchtune.steps.training import warm_start

log = logging.getLogger(__name__)


def rank_arguments(tokenized: str, output: str, checkpoint_uri: str, config: TrainParams,
                   registry_root: str = "", model_name: str = "") -> list[str]:
    """The arguments of this entry point on every rank (``build_parser``): the locations, the registry of a
    warm start, and the training parameters that differ from the defaults."""
    arguments = [f"--tokenized={tokenized}", f"--output={output}", f"--checkpoint-uri={checkpoint_uri}"]
    if config.init_from:
        arguments += [f"--registry-root={registry_root}", f"--model-name={model_name}"]
    return arguments + [f"--param={name}={value}" for name, value in config.model_dump(exclude_defaults=True).items()]


def torchrun_command(processes: int, tokenized_dir: str, output_dir: str, config: TrainParams, checkpoint_uri: str,
                     registry_root: str = "", model_name: str = "") -> list[str]:
    """The torchrun command line that trains on ``processes`` local processes (a one-node rendezvous)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "searchtune.steps.finetune_launch",
            *rank_arguments(tokenized_dir, output_dir, checkpoint_uri, config, registry_root, model_name)]


def run(tokenized_dir: str, output_dir: str, config: TrainParams | None = None, checkpoint_uri: str = "",
        registry_root: str = "", model_name: str = "") -> records.ModelRecord:
    """Fine-tune on this node's processes (see the module docstring); the model record rank 0 wrote.

    Args:
        registry_root, model_name: where ``config.init_from``'s version is (a warm start).

    Raises:
        SearchtuneError: more processes than GPUs, or a training process failed.
    """
    config = config or TrainParams()
    processes = distributed.processes_per_node(config.processes_per_node)
    if processes <= 1 or distributed.launched_by_torchrun():
        from searchtune.steps import finetune

        with tempfile.TemporaryDirectory(prefix="searchtune-init-") as temp:
            start, init_dir = warm_start.fetch(registry_root, model_name, config.init_from, os.path.join(temp, "model"))
            return finetune.finetune(tokenized_dir, output_dir, config, checkpoint_uri=checkpoint_uri,
                                     warm_start=start, init_dir=init_dir)
    command = torchrun_command(processes, tokenized_dir, output_dir, config, checkpoint_uri, registry_root, model_name)
    log.info("starting %d data-parallel training processes: %s", processes, " ".join(command[1:]))
    # torchrun sets one thread per process unless told otherwise; on CPU share the cores between the ranks.
    env = {**os.environ}
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max((os.cpu_count() or 1) // processes, 1))
    finished = subprocess.run(command, env=env, check=False)
    if finished.returncode != 0:
        raise SearchtuneError(f"data-parallel training failed: torchrun exited with {finished.returncode} "
                              "(the failing rank's error is logged above)")
    record = records.ModelRecord.read(output_dir)
    log.info("%d processes trained the model in %s: best epoch %d, validation AUC %s", processes, output_dir,
             record.best_epoch, record.best_validation_auc)
    return record


def _parameter(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="One data-parallel rank of the fine-tune step (started by torchrun).")
    parser.add_argument("--tokenized", required=True, help="the tokenize step's output folder (local, or gs://: downloaded "
                                                            "once per node)")
    parser.add_argument("--output", required=True, help="where rank 0 writes the model (local or gs://)")
    parser.add_argument("--checkpoint-uri", default="", help="where to checkpoint and resume from (local or gs://)")
    parser.add_argument("--registry-root", default="", help="the registry of the version init_from names (a warm start)")
    parser.add_argument("--model-name", default="", help="the model of the version init_from names")
    parser.add_argument("--param", type=_parameter, action="append", default=[], help="a TrainParams value, NAME=VALUE")
    return parser


def main(argv: list[str] | None = None) -> int:
    """One rank's training: join the group torchrun describes, train, leave the group."""
    args = build_parser().parse_args(argv)
    logs.setup()
    rank = int(os.environ.get("RANK", "0"))
    if rank:
        logging.getLogger("searchtune").setLevel(logging.WARNING)  # rank 0 tells the story; the others only their problems
    try:
        config = params.parse(TrainParams, dict(args.param))
        group = distributed.start()
    except SearchtuneError as error:
        log.error("%s", error)
        return 2
    from searchtune.steps import finetune

    try:
        with tempfile.TemporaryDirectory(prefix="searchtune-model-") as temp:
            tokenized = node_copy(args.tokenized, group)
            start, init_dir = node_warm_start(args.registry_root, args.model_name, config.init_from, group)
            output = os.path.join(temp, "model") if storage.is_gcs(args.output) else args.output
            finetune.finetune(tokenized, output, config, checkpoint_uri=args.checkpoint_uri, group=group,
                              warm_start=start, init_dir=init_dir)
            if output != args.output and group.is_main:
                storage.copy_tree(output, args.output)
    except SearchtuneError as error:
        log.error("rank %d: %s", group.rank, error)
        return 2
    finally:
        distributed.stop(group)
    return 0


def node_copy(uri: str, group: distributed.Group) -> str:
    """A local folder with the tokenize output at ``uri``: itself, or (gs://) one download per node.

    The trainer memory-maps the shards, so they must be on a local disk; local rank 0
    downloads them once for every rank of its node.
    """
    if not storage.is_gcs(uri):
        return uri
    folder = os.path.join(tempfile.gettempdir(), "searchtune-tokenized-" + hashlib.sha256(uri.encode()).hexdigest()[:16])
    once_per_node(group, lambda: storage.copy_tree(uri, folder))
    return folder


def once_per_node(group: distributed.Group, action) -> None:
    """Run ``action`` on local rank 0 of each node while the other ranks wait; if it fails on
    any node, every rank raises its error (rather than waiting for a rank that gave up)."""
    error = None
    if group.local_rank == 0:
        try:
            action()
        except Exception as failure:  # noqa: BLE001 - passed to every rank, then raised there
            error = str(failure) if isinstance(failure, SearchtuneError) else f"{type(failure).__name__}: {failure}"
    errors = [e for e in group.gather_objects(error) if e]
    if errors:
        raise SearchtuneError(errors[0])


def node_warm_start(registry_root: str, model_name: str, version: str, group: distributed.Group):
    """The version a warm start continues, fetched once per node by local rank 0: ``(record, folder)``."""
    if not version:
        return None, ""
    key = hashlib.sha256(f"{registry_root}\0{model_name}\0{version}".encode()).hexdigest()[:16]
    folder = os.path.join(tempfile.gettempdir(), "searchtune-init-" + key)
    once_per_node(group, lambda: warm_start.fetch(registry_root, model_name, version, folder))
    start, _ = warm_start.fetch(registry_root, model_name, version, folder)  # resolves; the files are there now
    return start, folder


if __name__ == "__main__":
    sys.exit(main())
