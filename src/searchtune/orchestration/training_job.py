"""Multi-node fine-tuning started by the pipeline: the fine-tune task creates a training job and waits for it.

With ``searchtune compile --finetune-nodes N`` (N > 1) the compiled fine-tune task holds no
GPU. It creates a Kubeflow Trainer ``TrainJob`` on the ``torch-distributed`` runtime (or,
with ``--training-job-kind PyTorchJob``, a Training Operator ``PyTorchJob``) whose pods run
``torchrun -m searchtune.steps.finetune_launch`` on N nodes, waits for it, and copies the
model rank 0 wrote into its own output artifact, so evaluation, the gate and registration
are the same as for one node. The job's description (image, nodes, GPUs, placement) is
fixed at compile time and reaches the task as ``SEARCHTUNE_TRAINING_JOB`` (JSON).

A retried fine-tune task (its pod preempted while it waited) finds the job by its name,
derived from the run id, and waits for it again instead of starting a second one; the
job's own pods resume from the checkpoints. A finished job is deleted; a failed one is
kept for ``kubectl describe`` and its pods' logs, and the step fails naming it.

The manifests in ``manifests/training/`` are this module's output for the example
settings (``tests/test_training_job.py`` checks they agree).
"""

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any, Literal

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.params import TrainParams

log = logging.getLogger(__name__)

ENV_VARIABLE = "SEARCHTUNE_TRAINING_JOB"
ENTRY_POINT = "searchtune.steps.finetune_launch"
MANAGER = "searchtune"
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
JobKind = Literal["TrainJob", "PyTorchJob"]
# group, version, plural of each kind in the Kubernetes API
API = {"TrainJob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs"), "PyTorchJob": ("kubeflow.org", "v1", "pytorchjobs")}


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


def job_name(run_id: str) -> str:
    """A Kubernetes name (DNS label, room for the pods' suffixes) that is the same for every retry of a run's task."""
    return "searchtune-ft-" + hashlib.sha256(run_id.encode()).hexdigest()[:12]


def rank_arguments(tokenized_uri: str, output_uri: str, checkpoint_uri: str, config: TrainParams,
                   registry_root: str = "", model_name: str = "") -> list[str]:
    """The arguments of ``finetune_launch`` on every rank: locations and the training parameters that differ from the defaults."""
    arguments = [f"--tokenized={tokenized_uri}", f"--output={output_uri}", f"--checkpoint-uri={checkpoint_uri}"]
    if config.init_from:
        arguments += [f"--registry-root={registry_root}", f"--model-name={model_name}"]
    changed = config.model_dump(exclude_defaults=True)
    changed.pop("processes_per_node", None)  # the job's pods start one rank per GPU themselves
    return arguments + [f"--param={name}={value}" for name, value in changed.items()]


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
    volumes, mounts = _shm(spec)
    if spec.kind == "TrainJob":
        # The runtime sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR/PORT, which torchrun reads.
        pod = {**_pod_extras(spec), "volumes": volumes, "containers": [{"name": "node", "volumeMounts": mounts}]}
        replicated = {"name": "node", "template": {"spec": {"template": {"spec": pod}}}}
        return {
            "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": metadata,
            "spec": {
                "runtimeRef": {"name": spec.runtime, "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"},
                "trainer": {"image": spec.image, "command": ["torchrun", "-m", ENTRY_POINT], "args": list(arguments),
                            "numNodes": spec.nodes, "resourcesPerNode": _resources(spec)},
                "runtimePatches": [{"manager": MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
                    "replicatedJobs": [replicated]}}}}],
            },
        }
    # The Training Operator sets PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, MASTER_ADDR and MASTER_PORT.
    container = {"name": "pytorch", "image": spec.image,
                 "command": ["torchrun", "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)", "-m", ENTRY_POINT],
                 "args": list(arguments), "resources": _resources(spec), "volumeMounts": mounts}
    pod = {"template": {"spec": {**_pod_extras(spec), "containers": [container], "volumes": volumes}}}
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", **pod}}
    if spec.nodes > 1:
        replicas["Worker"] = {"replicas": spec.nodes - 1, "restartPolicy": "OnFailure", **pod}
    return {
        "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": metadata,
        "spec": {"nprocPerNode": str(spec.gpus_per_node or 1), "runPolicy": {"backoffLimit": spec.backoff_limit,
                                                                             "cleanPodPolicy": "None"},
                 "pytorchReplicaSpecs": replicas},
    }


@dataclasses.dataclass(frozen=True)
class JobState:
    finished: bool
    succeeded: bool
    phase: str  # the newest true condition, e.g. Created, Running, Complete, Failed
    message: str = ""


def job_state(job: dict) -> JobState:
    """Where a TrainJob or PyTorchJob stands, from its status conditions (Trainer: Complete/Failed; operator: Succeeded/Failed)."""
    conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if str(c.get("status")) == "True"]
    by_type = {c.get("type"): c for c in conditions}
    for failed in ("Failed",):
        if failed in by_type:
            condition = by_type[failed]
            return JobState(True, False, failed, f"{condition.get('reason', '')}: {condition.get('message', '')}".strip(": "))
    for done in ("Complete", "Succeeded"):
        if done in by_type:
            return JobState(True, True, done, by_type[done].get("message", ""))
    phase = conditions[-1].get("type", "Pending") if conditions else "Pending"
    return JobState(False, False, phase, conditions[-1].get("message", "") if conditions else "")


class KubernetesJobs:
    """Create, read and delete one kind of training job in one namespace (the ``kubernetes`` client)."""

    def __init__(self, kind: JobKind, namespace: str, api: Any = None):
        self.kind, self.namespace = kind, namespace
        self.group, self.version, self.plural = API[kind]
        if api is None:
            from kubernetes import client, config

            config.load_incluster_config()
            api = client.CustomObjectsApi()
        self.api = api

    def create_or_attach(self, body: dict) -> bool:
        """Create the job; False when a job of that name exists already (a retried task waits for it)."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.create_namespaced_custom_object(self.group, self.version, self.namespace, self.plural, body)
            return True
        except ApiException as error:
            if error.status == 409:
                return False
            raise SearchtuneError(f"cannot create {self.kind} {body['metadata']['name']} in namespace {self.namespace}: "
                                  f"{error.status} {error.reason} (is {self.group} installed, and may the pipeline's "
                                  "service account create it? manifests/base/rbac.yaml)") from None

    def get(self, name: str) -> dict:
        return self.api.get_namespaced_custom_object(self.group, self.version, self.namespace, self.plural, name)

    def delete(self, name: str) -> None:
        self.api.delete_namespaced_custom_object(self.group, self.version, self.namespace, self.plural, name)


def current_namespace() -> str:
    try:
        with open(NAMESPACE_FILE) as handle:
            return handle.read().strip()
    except OSError:
        raise SearchtuneError(f"a multi-node training job is started from inside the cluster; {NAMESPACE_FILE} "
                              "is missing (is this a Kubernetes pod?)") from None


def train(spec: TrainingJobSpec, jobs: KubernetesJobs, *, run_id: str, tokenized_uri: str, model_uri: str, model_dir: str,
          config: TrainParams, checkpoint_uri: str, registry_root: str = "", model_name: str = "",
          poll_seconds: float = 30.0) -> records.ModelRecord:
    """Train on a multi-node job and put its model in ``model_dir``; the model record.

    Args:
        spec: the job's pods (``spec_from_environment``).
        jobs: the Kubernetes API for the job's kind and namespace.
        run_id: the pipeline run; names the job, so a retried task finds it.
        tokenized_uri: the tokenize step's output where every node can read it (gs://).
        model_uri: the fine-tune task's model artifact URI; the job writes to ``<model_uri>-job``.
        model_dir: the local folder of that artifact, filled with the job's model.
        checkpoint_uri: where the job checkpoints (gs://, shared by the nodes).

    Raises:
        SearchtuneError: the job cannot be created, failed, or wrote no model.
    """
    for what, uri in (("the tokenized data", tokenized_uri), ("the model", model_uri), ("the checkpoints", checkpoint_uri)):
        if not storage.is_gcs(uri):
            raise SearchtuneError(f"multi-node training needs {what} in gs://, where every node reaches it; it is at "
                                  f"{uri or '(nowhere)'} (use a gs:// pipeline root, and checkpoint_root for checkpoints)")
    output_uri = model_uri.rstrip("/") + "-job"
    name = job_name(run_id)
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
    jobs.delete(name)
    log.info("%s %s trained the model in %.0f s (best epoch %d, validation AUC %s); copied to the model artifact, job deleted",
             spec.kind, name, time.monotonic() - started, record.best_epoch, record.best_validation_auc)
    return record
