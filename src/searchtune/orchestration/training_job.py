"""Multi-node fine-tuning started by the pipeline: the fine-tune task creates a training job and waits for it.

With ``searchtune compile --finetune-nodes N`` (N > 1) the compiled fine-tune task holds no
GPU. It creates a Kubeflow Trainer ``TrainJob`` on the ``torch-distributed`` runtime (or,
with ``--training-job-kind PyTorchJob``, a Training Operator ``PyTorchJob``) whose pods run
``torchrun -m searchtune.steps.finetune_launch`` on N nodes, waits for it, and copies the
model rank 0 wrote into its own output artifact, so evaluation, the gate and registration
are the same as for one node. The job's description (image, nodes, GPUs, placement) is
fixed at compile time and reaches the task as ``SEARCHTUNE_TRAINING_JOB`` (JSON).

A retried fine-tune task (its pod preempted while it waited) finds the job by its name,
derived from the task's model artifact URI (the same for every retry of one task, never
the same for two runs), and waits for it again instead of starting a second one; the
job's own pods resume from the checkpoints. A finished job is deleted, and so is the copy
of the model it wrote. A failed one is kept for ``kubectl describe`` and its pods' logs,
and the step fails naming it; a retry of the step replaces it with a new job, which
resumes from the checkpoints. The Kubernetes API's passing failures (429, 5xx, a dropped
connection) are retried while waiting.

The manifests in ``manifests/training/`` are this module's output for the example
settings (``tests/test_training_job.py`` checks they agree).
"""

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.orchestration.kubernetes_jobs import API, JobKind, JobState, KubernetesJobs, current_namespace, job_state
from searchtune.params import TrainParams

__all__ = ["API", "ENV_VARIABLE", "JobState", "KubernetesJobs", "TrainingJobSpec", "current_namespace", "job_name", "job_state",
           "manifest", "rank_arguments", "spec_from_environment", "train"]

log = logging.getLogger(__name__)

ENV_VARIABLE = "SEARCHTUNE_TRAINING_JOB"
ENTRY_POINT = "searchtune.steps.finetune_launch"
MANAGER = "searchtune"


@dataclasses.dataclass(frozen=True)
class TrainingJobSpec:
    """What the training job's pods get; set at compile time (``orchestration.cluster``)."""

    kind: JobKind
    nodes: int
    gpus_per_node: int
    image: str
    accelerator: str = "nvidia.com/gpu"
    cpu: str | None = None
    memory: str | None = None
    shm_size: str | None = None
    node_selector: dict[str, str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[dict[str, str], ...] = ()
    service_account: str = "searchtune"
    runtime: str = "torch-distributed"
    backoff_limit: int = 3

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainingJobSpec":
        values = json.loads(text)
        return cls(**{**values, "tolerations": tuple(values.get("tolerations", ()))})


def spec_from_environment() -> TrainingJobSpec | None:
    """The compiled training job of this task, or None: train in the task itself."""
    text = os.environ.get(ENV_VARIABLE, "")
    return TrainingJobSpec.from_json(text) if text else None


def job_name(model_uri: str) -> str:
    """A Kubernetes name (DNS label, room for the pods' suffixes), the same for every retry of one fine-tune task."""
    return "searchtune-ft-" + hashlib.sha256(model_uri.encode()).hexdigest()[:12]


def rank_arguments(tokenized_uri: str, output_uri: str, checkpoint_uri: str, config: TrainParams,
                   registry_root: str = "", model_name: str = "") -> list[str]:
    """``finetune_launch.rank_arguments`` for the job's ranks, without ``processes_per_node``: the job's pods
    start one rank per GPU themselves."""
    from searchtune.steps import finetune_launch  # imports torch: not at compile time

    unset = {"processes_per_node": TrainParams.model_fields["processes_per_node"].default}
    return finetune_launch.rank_arguments(tokenized_uri, output_uri, checkpoint_uri, config.model_copy(update=unset),
                                          registry_root, model_name)


def _resources(spec: TrainingJobSpec) -> dict:
    requests = {name: value for name, value in (("cpu", spec.cpu), ("memory", spec.memory)) if value}
    limits = {"memory": spec.memory} if spec.memory else {}
    if spec.gpus_per_node:
        limits[spec.accelerator] = str(spec.gpus_per_node)
    return {key: value for key, value in (("requests", requests), ("limits", limits)) if value}


def _pod_extras(spec: TrainingJobSpec) -> dict:
    """Service account, /dev/shm, placement: what each node's pod needs besides its container."""
    extras: dict[str, Any] = {"serviceAccountName": spec.service_account}
    if spec.node_selector:
        extras["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        extras["tolerations"] = [dict(t) for t in spec.tolerations]
    return extras


def _shm(spec: TrainingJobSpec) -> tuple[list, list]:
    """(volumes, mounts) of a memory-backed /dev/shm: NCCL and the DataLoader workers pass tensors through it."""
    empty_dir = {"medium": "Memory", **({"sizeLimit": spec.shm_size} if spec.shm_size else {})}
    return [{"name": "dshm", "emptyDir": empty_dir}], [{"name": "dshm", "mountPath": "/dev/shm"}]


def manifest(spec: TrainingJobSpec, name: str, arguments: list[str]) -> dict:
    """The TrainJob or PyTorchJob that trains on ``spec.nodes`` nodes with ``arguments`` for every rank."""
    metadata = {"name": name, "labels": {"app.kubernetes.io/part-of": "searchtune"}}
    # An Istio sidecar (multi-user Kubeflow namespaces inject one) never exits, so a pod would never complete.
    pod_metadata = {"annotations": {"sidecar.istio.io/inject": "false"}}
    volumes, mounts = _shm(spec)
    if spec.kind == "TrainJob":
        # The runtime sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR/PORT, which torchrun reads.
        pod = {**_pod_extras(spec), "volumes": volumes, "containers": [{"name": "node", "volumeMounts": mounts}]}
        replicated = {"name": "node", "template": {"spec": {"template": {"metadata": pod_metadata, "spec": pod}}}}
        return {
            "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": metadata,
            "spec": {
                "runtimeRef": {"name": spec.runtime, "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"},
                "trainer": {"image": spec.image, "command": ["torchrun", "-m", ENTRY_POINT], "args": list(arguments),
                            "numNodes": spec.nodes, "numProcPerNode": spec.gpus_per_node or 1,
                            "resourcesPerNode": _resources(spec)},
                "runtimePatches": [{"manager": MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
                    "replicatedJobs": [replicated]}}}}],
            },
        }
    # The Training Operator sets PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, MASTER_ADDR and MASTER_PORT.
    container = {"name": "pytorch", "image": spec.image,
                 "command": ["torchrun", "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)", "-m", ENTRY_POINT],
                 "args": list(arguments), "resources": _resources(spec), "volumeMounts": mounts}
    pod = {"template": {"metadata": pod_metadata, "spec": {**_pod_extras(spec), "containers": [container], "volumes": volumes}}}
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", **pod}}
    if spec.nodes > 1:
        replicas["Worker"] = {"replicas": spec.nodes - 1, "restartPolicy": "OnFailure", **pod}
    return {
        "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": metadata,
        "spec": {"nprocPerNode": str(spec.gpus_per_node or 1), "runPolicy": {"backoffLimit": spec.backoff_limit,
                                                                             "cleanPodPolicy": "None"},
                 "pytorchReplicaSpecs": replicas},
    }


def train(spec: TrainingJobSpec, jobs: KubernetesJobs, *, tokenized_uri: str, model_uri: str, model_dir: str,
          config: TrainParams, checkpoint_uri: str, registry_root: str = "", model_name: str = "",
          poll_seconds: float = 30.0) -> records.ModelRecord:
    """Train on a multi-node job and put its model in ``model_dir``; the model record.

    Args:
        spec: the job's pods (``spec_from_environment``).
        jobs: the Kubernetes API for the job's kind and namespace.
        tokenized_uri: the tokenize step's output where every node can read it (gs://).
        model_uri: the fine-tune task's model artifact URI: it names the job (so a retried task finds
            it); the job writes the model to ``<model_uri>-job``.
        model_dir: the local folder of that artifact, filled with the job's model.
        checkpoint_uri: where the job checkpoints (gs://, shared by the nodes).

    Raises:
        SearchtuneError: the job cannot be created, failed, or wrote no model.
    """
    locations = [("the tokenized data", tokenized_uri), ("the model", model_uri), ("the checkpoints", checkpoint_uri)]
    if config.init_from:
        locations.append(("the registry init_from reads", registry_root))
    for what, uri in locations:
        if not storage.is_gcs(uri):
            raise SearchtuneError(f"multi-node training needs {what} in gs://, where every node reaches it; it is at "
                                  f"{uri or '(nowhere)'} (use a gs:// pipeline root, and checkpoint_root for checkpoints)")
    output_uri = model_uri.rstrip("/") + "-job"
    name = job_name(model_uri)
    body = manifest(spec, name, rank_arguments(tokenized_uri, output_uri, checkpoint_uri, config, registry_root, model_name))
    created = jobs.create_or_attach(body)
    log.info("%s %s %s in namespace %s: %d node(s) x %d GPU(s), model to %s", "created" if created else "waiting for existing",
             spec.kind, name, jobs.namespace, spec.nodes, spec.gpus_per_node, output_uri)
    started, phase = time.monotonic(), ""
    while True:
        state = job_state(jobs.get(name))
        if state.phase != phase:
            phase = state.phase
            log.info("%s %s: %s after %.0f s%s", spec.kind, name, phase, time.monotonic() - started,
                     f" ({state.message})" if state.message else "")
        if state.finished:
            break
        time.sleep(poll_seconds)
    if not state.succeeded:
        raise SearchtuneError(f"{spec.kind} {name} failed: {state.message or 'no reason given'}; it is kept for "
                              f"`kubectl describe {spec.kind.lower()} {name} -n {jobs.namespace}` and its pods' logs")
    if not storage.exists(storage.join(output_uri, records.ModelRecord.FILE)):
        raise SearchtuneError(f"{spec.kind} {name} finished but wrote no model to {output_uri}")
    storage.copy_tree(output_uri, model_dir)
    record = records.ModelRecord.read(model_dir)
    deleted = jobs.delete(name)
    for uri in storage.list_prefix(output_uri):  # the artifact holds the model now; its second copy goes
        storage.delete(uri)
    log.info("%s %s trained the model in %.0f s (best epoch %d, validation AUC %s); copied to the model artifact%s",
             spec.kind, name, time.monotonic() - started, record.best_epoch, record.best_validation_auc,
             ", job deleted" if deleted else "")
    return record
