"""Cluster settings of the compiled pipeline: images, GPU, node placement, /dev/shm, retries.

The pipeline body calls ``configure_tasks`` once after creating its tasks; everything
Kubernetes-specific is written into the compiled YAML here, through the KFP SDK
(``set_accelerator_*``, ``set_retry``, ``set_container_image``) and ``kfp-kubernetes``
(node selector, toleration, memory-backed ``/dev/shm``). Only the fine-tune task gets the
GPU, the node placement and the shm mount: the CPU steps stay schedulable on any node.
With ``finetune_nodes`` > 1 those go to the pods of a multi-node training job instead,
which the fine-tune task starts and waits for (``orchestration.training_job``).

``kfp.local``'s SubprocessRunner ignores these settings except environment variables (it
runs every task in this Python environment), so the default ``ClusterSettings()`` is safe
for local runs; ``searchtune run`` always uses it (one node, no training job).
"""

import dataclasses
import logging
from collections.abc import Sequence

from kfp import kubernetes
from kfp.dsl import PipelineTask

from searchtune.errors import SearchtuneError
from searchtune.orchestration import images, training_job
from searchtune.orchestration.kube_values import (
    CPU_QUANTITY,
    DURATION,
    MEMORY_QUANTITY,
    OBJECT_NAME,
    Toleration,
    check_label,
    check_quantity,
    check_toleration,
)

logger = logging.getLogger(__name__)

SHM_VOLUME_NAME = "dshm"
SHM_MOUNT_PATH = "/dev/shm"


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """How the compiled pipeline runs on a cluster.

    Attributes:
        image_prefix: Registry path of the images (``REGISTRY/PATH``); None keeps the
            components' default images from ``searchtune.orchestration.images``.
        image_tag: Image tag; None keeps the default tag.
        gpu_count: GPUs requested by the fine-tune task; 0 trains on CPU.
        accelerator_type: Accelerator resource: ``nvidia.com/gpu`` on Kubeflow, a Vertex
            accelerator name such as ``NVIDIA_L4`` on Vertex AI Pipelines.
        node_selector: Node labels the fine-tune pod must match (e.g. the GKE GPU pool).
        tolerations: Taints the fine-tune pod tolerates (e.g. a spot or GPU pool's taint).
        shm_size: Size limit of the memory-backed ``/dev/shm`` of the fine-tune pod
            (PyTorch data loader workers share tensors through it); None = no limit.
        retries: Retries of the fine-tune task; a preempted pod is retried and resumes
            from the trainer's checkpoint in its output location.
        cpu_retries: Retries of the CPU tasks.
        retry_backoff: First wait before a retry (``60s``, ``5m``); doubles each time.
        retry_backoff_max: Longest wait between retries.
        finetune_cpu: CPU request of the fine-tune task (None = cluster default).
        finetune_memory: Memory request and limit of the fine-tune task.
        cpu_task_cpu: CPU request of each CPU task.
        cpu_task_memory: Memory request and limit of each CPU task.
        enable_caching: None keeps KFP's default (cache on; the tasks that read outside
            state turn it off themselves, see the pipeline's docstring); False turns caching
            off on every task (``searchtune submit --no-cache``).
        finetune_nodes: Nodes the fine-tune step trains on. Above 1 the fine-tune task holds
            no GPU: it starts a training job on that many nodes of ``gpu_count`` GPUs each,
            with this task's image, placement and /dev/shm, and waits for it
            (``orchestration.training_job``; Kubeflow only, not Vertex AI).
        training_job_kind: ``TrainJob`` (Kubeflow Trainer) or ``PyTorchJob`` (Training Operator).
        training_runtime: The TrainJob's ClusterTrainingRuntime.
        training_service_account: The service account of the job's pods (bucket access).
        finetune_on_cpu_image: The fine-tune task runs in the CPU image (a containerized
            local run on a machine without GPUs: the GPU image would only add GBs).
    """

    image_prefix: str | None = None
    image_tag: str | None = None
    gpu_count: int = 1
    accelerator_type: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    shm_size: str | None = "2Gi"
    retries: int = 3
    cpu_retries: int = 1
    retry_backoff: str = "60s"
    retry_backoff_max: str = "1h"
    finetune_cpu: str | None = "4"
    finetune_memory: str | None = "16Gi"
    cpu_task_cpu: str | None = "1"
    cpu_task_memory: str | None = "4Gi"
    enable_caching: bool | None = None
    finetune_nodes: int = 1
    training_job_kind: str = "TrainJob"
    training_runtime: str = "torch-distributed"
    training_service_account: str = "searchtune"
    finetune_on_cpu_image: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "tolerations", tuple(self.tolerations))
        if self.gpu_count < 0:
            raise SearchtuneError(f"--gpu-count must be 0 or more, got {self.gpu_count}")
        if self.retries < 0 or self.cpu_retries < 0:
            raise SearchtuneError(f"retries must be 0 or more, got {self.retries} and {self.cpu_retries}")
        if not self.accelerator_type.strip():
            raise SearchtuneError("--accelerator-type must not be empty")
        for key, value in self.node_selector.items():
            check_label(key, value)
        for toleration in self.tolerations:
            check_toleration(toleration)
        for name in ("finetune_cpu", "cpu_task_cpu"):
            check_quantity(name, getattr(self, name), CPU_QUANTITY)
        for name in ("finetune_memory", "cpu_task_memory", "shm_size"):
            check_quantity(name, getattr(self, name), MEMORY_QUANTITY)
        for name in ("retry_backoff", "retry_backoff_max"):
            if not DURATION.match(getattr(self, name)):
                raise SearchtuneError(f"{name} must look like 60s, 5m or 1h, got {getattr(self, name)!r}")
        if self.finetune_nodes < 1:
            raise SearchtuneError(f"--finetune-nodes must be 1 or more, got {self.finetune_nodes}")
        if self.training_job_kind not in training_job.API:
            raise SearchtuneError(f"--training-job-kind must be one of {', '.join(training_job.API)}, "
                                  f"got {self.training_job_kind!r}")
        if self.finetune_nodes > 1 and "/" not in self.accelerator_type:
            raise SearchtuneError(f"--finetune-nodes {self.finetune_nodes} starts a Kubernetes training job, which needs a "
                                  f"Kubernetes resource name as --accelerator-type (nvidia.com/gpu), not "
                                  f"{self.accelerator_type!r}; Vertex AI Pipelines cannot start one")
        for name in ("training_runtime", "training_service_account"):
            if not OBJECT_NAME.match(getattr(self, name)):
                raise SearchtuneError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is not a Kubernetes object name "
                                      "(lower-case letters, digits, '-' and '.')")
        for name in ("image_prefix", "image_tag"):
            value = getattr(self, name)
            if value is not None and (not value.strip() or any(c.isspace() for c in value)):
                raise SearchtuneError(f"--{name.replace('_', '-')} must be a non-empty word, got {value!r}")

    @property
    def cpu_image(self) -> str:
        """Image of ingest, tokenize, evaluate and register."""
        return self._image(images.CPU_IMAGE_NAME, images.CPU_IMAGE)

    @property
    def gpu_image(self) -> str:
        """Image of the fine-tune task."""
        if self.finetune_on_cpu_image:
            return self.cpu_image
        return self._image(images.GPU_IMAGE_NAME, images.GPU_IMAGE)

    def _image(self, name: str, default: str) -> str:
        if self.image_prefix is None and self.image_tag is None:
            return default
        return images.image(name, self.image_prefix or images.IMAGE_PREFIX, self.image_tag or images.IMAGE_TAG)


def configure_tasks(
    settings: ClusterSettings | None,
    cpu_tasks: Sequence[PipelineTask],
    finetune_task: PipelineTask,
) -> None:
    """Apply the cluster settings to the pipeline's tasks; call it inside the pipeline body.

    Args:
        settings: The settings; None means ``ClusterSettings()``.
        cpu_tasks: Ingest, tokenize, evaluate and register: CPU image, CPU/memory requests.
        finetune_task: The training task: GPU image, accelerator, node placement, /dev/shm.
    """
    settings = settings or ClusterSettings()
    custom_images = settings.image_prefix is not None or settings.image_tag is not None
    for task in cpu_tasks:
        if custom_images:
            task.set_container_image(settings.cpu_image)
        _set_resources(task, settings.cpu_task_cpu, settings.cpu_task_memory)
        _set_retry(task, settings.cpu_retries, settings)
        _set_caching(task, settings.enable_caching)

    task = finetune_task
    if custom_images or settings.finetune_on_cpu_image:
        task.set_container_image(settings.gpu_image)
    if settings.finetune_nodes > 1:
        _configure_job_launcher(task, settings)
        return
    _set_resources(task, settings.finetune_cpu, settings.finetune_memory)
    if settings.gpu_count:
        task.set_accelerator_type(settings.accelerator_type)
        task.set_accelerator_limit(settings.gpu_count)
    for key, value in settings.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in settings.tolerations:
        kubernetes.add_toleration(
            task,
            key=toleration.key,
            operator=toleration.operator,
            value=toleration.value,
            effect=toleration.effect,
        )
    # The default /dev/shm of a container is 64 MiB; PyTorch DataLoader workers and NCCL
    # pass tensors through it and crash with "bus error" when it fills up.
    kubernetes.empty_dir_mount(
        task, volume_name=SHM_VOLUME_NAME, mount_path=SHM_MOUNT_PATH, medium="Memory", size_limit=settings.shm_size
    )
    _set_retry(task, settings.retries, settings)
    _set_caching(task, settings.enable_caching)
    # DEBUG: importing the pipeline module builds a default pipeline too, which is not news.
    logger.debug(
        "configured %d CPU task(s) on %s and fine-tune on %s with %d x %s, %d node selector(s), "
        "%d toleration(s), %d retries",
        len(cpu_tasks),
        settings.cpu_image,
        settings.gpu_image,
        settings.gpu_count,
        settings.accelerator_type,
        len(settings.node_selector),
        len(settings.tolerations),
        settings.retries,
    )


def training_job_spec(settings: ClusterSettings) -> training_job.TrainingJobSpec:
    """The multi-node training job these settings describe: the fine-tune pod's resources, on each node."""
    return training_job.TrainingJobSpec(
        kind=settings.training_job_kind, nodes=settings.finetune_nodes, gpus_per_node=settings.gpu_count,
        image=settings.gpu_image, accelerator=settings.accelerator_type, cpu=settings.finetune_cpu,
        memory=settings.finetune_memory, shm_size=settings.shm_size, node_selector=dict(settings.node_selector),
        tolerations=tuple({"key": t.key, "operator": t.operator, **({"value": t.value} if t.value is not None else {}),
                           "effect": t.effect} for t in settings.tolerations),
        service_account=settings.training_service_account, runtime=settings.training_runtime,
        backoff_limit=settings.retries,
    )


def _configure_job_launcher(task: PipelineTask, settings: ClusterSettings) -> None:
    """The fine-tune task as the launcher of a multi-node job: CPU resources, the job's description in its environment."""
    _set_resources(task, settings.cpu_task_cpu, settings.cpu_task_memory)
    task.set_env_variable(training_job.ENV_VARIABLE, training_job_spec(settings).to_json())
    # A retried launcher finds its job by name and waits again; the job's pods resume from their checkpoints.
    _set_retry(task, settings.retries, settings)
    _set_caching(task, settings.enable_caching)
    logger.debug("fine-tune starts a %s on %d nodes x %d %s", settings.training_job_kind, settings.finetune_nodes,
                 settings.gpu_count, settings.accelerator_type)


def _set_resources(task: PipelineTask, cpu: str | None, memory: str | None) -> None:
    if cpu is not None:
        task.set_cpu_request(cpu)
    if memory is not None:
        # Request = limit: a pod that may grow past its request is the first one evicted.
        task.set_memory_request(memory)
        task.set_memory_limit(memory)


def _set_retry(task: PipelineTask, retries: int, settings: ClusterSettings) -> None:
    if retries:
        task.set_retry(
            num_retries=retries,
            backoff_duration=settings.retry_backoff,
            backoff_factor=2.0,
            backoff_max_duration=settings.retry_backoff_max,
        )


def _set_caching(task: PipelineTask, enable_caching: bool | None) -> None:
    if enable_caching is not None:
        task.set_caching_options(enable_caching)
