"""Cluster settings of the compiled pipeline: images, GPU, node placement, /dev/shm, retries.

The pipeline body calls ``configure_tasks`` once after creating its tasks; everything
Kubernetes-specific is written into the compiled YAML here, through the KFP SDK
(``set_accelerator_*``, ``set_retry``, ``set_container_image``) and ``kfp-kubernetes``
(node selector, toleration, memory-backed ``/dev/shm``). Only the fine-tune task gets the
GPU, the node placement and the shm mount: the CPU steps stay schedulable on any node.

``kfp.local``'s SubprocessRunner ignores all of these settings (it runs every task in
this Python environment), so the default ``ClusterSettings()`` is safe for local runs.
"""

import dataclasses
import logging
import re
from collections.abc import Sequence

from kfp import kubernetes
from kfp.dsl import PipelineTask

from searchtune.errors import SearchtuneError
from searchtune.orchestration import images

logger = logging.getLogger(__name__)

TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
SHM_VOLUME_NAME = "dshm"
SHM_MOUNT_PATH = "/dev/shm"

# Kubernetes label keys: an optional DNS-subdomain prefix and a name of at most 63 chars.
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
# The quantity forms KFP's set_cpu_*/set_memory_* accept.
_CPU = re.compile(r"^[0-9]+(\.[0-9]+)?m?$")
_MEMORY = re.compile(r"^[0-9]+(\.[0-9]+)?(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")
_DURATION = re.compile(r"^[0-9]+(s|m|h)$")


@dataclasses.dataclass(frozen=True)
class Toleration:
    """A Kubernetes toleration: ``key=value:effect`` (operator Equal) or ``key:effect`` (Exists)."""

    key: str
    effect: str
    value: str | None = None

    @property
    def operator(self) -> str:
        return "Exists" if self.value is None else "Equal"


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """How the compiled pipeline runs on a cluster.

    Attributes:
        image_prefix: Registry path of the images (``REGISTRY/PATH``); None keeps the
            components' default images from ``searchtune.images``.
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
        enable_caching: None keeps KFP's default (cache on); False turns caching off on
            every task, as scheduled retraining must see new data every time.
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "tolerations", tuple(self.tolerations))
        if self.gpu_count < 0:
            raise SearchtuneError(f"--gpu-count must be 0 or more, got {self.gpu_count}")
        if self.retries < 0 or self.cpu_retries < 0:
            raise SearchtuneError(f"retries must be 0 or more, got {self.retries} and {self.cpu_retries}")
        if not self.accelerator_type.strip():
            raise SearchtuneError("--accelerator-type must not be empty")
        for key, value in self.node_selector.items():
            _check_label(key, value)
        for toleration in self.tolerations:
            _check_toleration(toleration)
        for name in ("finetune_cpu", "cpu_task_cpu"):
            _check_quantity(name, getattr(self, name), _CPU)
        for name in ("finetune_memory", "cpu_task_memory", "shm_size"):
            _check_quantity(name, getattr(self, name), _MEMORY)
        for name in ("retry_backoff", "retry_backoff_max"):
            if not _DURATION.match(getattr(self, name)):
                raise SearchtuneError(f"{name} must look like 60s, 5m or 1h, got {getattr(self, name)!r}")
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
        return self._image(images.GPU_IMAGE_NAME, images.GPU_IMAGE)

    def _image(self, name: str, default: str) -> str:
        if self.image_prefix is None and self.image_tag is None:
            return default
        return images.image(name, self.image_prefix or images.IMAGE_PREFIX, self.image_tag or images.IMAGE_TAG)


def _check_label(key: str, value: str) -> None:
    if not _LABEL_KEY.match(key) or len(key) > 317:
        raise SearchtuneError(f"node selector key {key!r} is not a Kubernetes label key")
    if not _LABEL_VALUE.match(value):
        raise SearchtuneError(f"node selector value {value!r} (key {key!r}) is not a Kubernetes label value")


def _check_toleration(toleration: Toleration) -> None:
    if not _LABEL_KEY.match(toleration.key):
        raise SearchtuneError(f"toleration key {toleration.key!r} is not a Kubernetes taint key")
    if toleration.effect not in TOLERATION_EFFECTS:
        raise SearchtuneError(
            f"toleration effect {toleration.effect!r} (key {toleration.key!r}) must be one of {', '.join(TOLERATION_EFFECTS)}"
        )
    if toleration.value is not None and not _LABEL_VALUE.match(toleration.value):
        raise SearchtuneError(f"toleration value {toleration.value!r} (key {toleration.key!r}) is not a taint value")


def _check_quantity(name: str, value: str | None, pattern: re.Pattern) -> None:
    if value is not None and not pattern.match(value):
        raise SearchtuneError(f"{name} {value!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")


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
    if custom_images:
        task.set_container_image(settings.gpu_image)
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


def parse_node_selector(text: str) -> tuple[str, str]:
    """Parse ``KEY=VALUE`` into a (key, value) pair.

    Args:
        text: The option's value, e.g. ``cloud.google.com/gke-accelerator=nvidia-l4``.
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SearchtuneError(f"--node-selector {text!r}: expected KEY=VALUE")
    _check_label(key, value)
    return key, value


def parse_toleration(text: str) -> Toleration:
    """Parse ``KEY[=VALUE]:EFFECT`` into a Toleration (``Equal`` with a value, else ``Exists``).

    Args:
        text: The option's value, e.g. ``nvidia.com/gpu=present:NoSchedule`` or
            ``cloud.google.com/gke-spot:NoSchedule``.
    """
    head, sep, effect = text.rpartition(":")
    if not sep or not head:
        raise SearchtuneError(f"--toleration {text!r}: expected KEY[=VALUE]:EFFECT with EFFECT one of "
                              f"{', '.join(TOLERATION_EFFECTS)}")
    key, has_value, value = head.partition("=")
    toleration = Toleration(key=key, effect=effect, value=value if has_value else None)
    _check_toleration(toleration)
    return toleration
