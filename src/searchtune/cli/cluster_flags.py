"""The cluster settings as command-line flags, shared by ``searchtune compile`` and ``submit``."""

import argparse

from searchtune.cli.parameters import in_usage_as
from searchtune.orchestration import images
from searchtune.orchestration.cluster import ClusterSettings
from searchtune.orchestration.kube_values import parse_node_selector, parse_toleration


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the cluster options shared by ``searchtune compile`` and ``searchtune submit``.

    Args:
        parser: The sub-command's parser.
    """
    defaults = ClusterSettings()
    group = parser.add_argument_group("cluster settings")

    def add(*flags, **options) -> None:
        in_usage_as(group.add_argument(*flags, **options), "CLUSTER FLAGS")  # submit's usage: one placeholder

    add("--image-prefix", metavar="PREFIX", default=None,
        help=f"registry path of the images, REGISTRY/PATH (default {images.IMAGE_PREFIX})")
    add("--image-tag", metavar="TAG", default=None, help=f"tag of the images (default {images.IMAGE_TAG})")
    add("--gpu-count", metavar="N", type=int, default=defaults.gpu_count,
        help="GPUs for the fine-tune task; 0 trains on CPU (default %(default)s)")
    add("--accelerator-type", metavar="TYPE", default=defaults.accelerator_type,
        help="accelerator resource: nvidia.com/gpu on Kubeflow, e.g. NVIDIA_L4 on Vertex AI "
             "(default %(default)s)")
    add("--node-selector", action="append", default=[], metavar="KEY=VALUE",
        help="node label the fine-tune pod must match; repeatable, empty = none "
             "(e.g. cloud.google.com/gke-accelerator=nvidia-l4)")
    add("--toleration", action="append", default=[], metavar="KEY[=VALUE]:EFFECT",
        help="taint the fine-tune pod tolerates; repeatable, empty = none (e.g. nvidia.com/gpu:NoSchedule)")
    add("--shm-size", metavar="SIZE", default=defaults.shm_size,
        help="size limit of the fine-tune pod's memory-backed /dev/shm (default %(default)s)")
    add("--retries", metavar="N", type=int, default=defaults.retries,
        help="retries of the fine-tune task, e.g. after preemption (default %(default)s)")
    add("--cpu-retries", metavar="N", type=int, default=defaults.cpu_retries,
        help="retries of each CPU task (default %(default)s)")
    add("--finetune-cpu", metavar="CPU", default=defaults.finetune_cpu,
        help="CPU request of the fine-tune task (default %(default)s)")
    add("--finetune-memory", metavar="MEMORY", default=defaults.finetune_memory,
        help="memory of the fine-tune task (default %(default)s)")
    add("--finetune-nodes", metavar="N", type=int, default=defaults.finetune_nodes,
        help="nodes to fine-tune on; above 1 the fine-tune task starts a training job of that many nodes "
             "with --gpu-count GPUs each and waits for it (Kubeflow only; default %(default)s)")
    add("--training-job-kind", default=defaults.training_job_kind, choices=["TrainJob", "PyTorchJob"],
        help="the multi-node job: TrainJob (Kubeflow Trainer) or PyTorchJob (Training Operator) "
             "(default %(default)s)")
    add("--training-runtime", metavar="NAME", default=defaults.training_runtime,
        help="the TrainJob's ClusterTrainingRuntime (default %(default)s)")
    add("--training-service-account", metavar="NAME", default=defaults.training_service_account,
        help="service account of the training job's pods, for bucket access (default %(default)s)")
    add("--cpu-task-cpu", metavar="CPU", default=defaults.cpu_task_cpu,
        help="CPU request of each CPU task (default %(default)s)")
    add("--cpu-task-memory", metavar="MEMORY", default=defaults.cpu_task_memory,
        help="memory of each CPU task (default %(default)s)")


def settings_from_args(args: argparse.Namespace, enable_caching: bool | None = None) -> ClusterSettings:
    """Build ClusterSettings from the options added by ``add_compile_arguments``.

    Args:
        args: Parsed arguments.
        enable_caching: Caching of every task; None keeps KFP's default.
    """
    return ClusterSettings(
        image_prefix=args.image_prefix,
        image_tag=args.image_tag,
        gpu_count=args.gpu_count,
        accelerator_type=args.accelerator_type,
        # An empty value adds nothing, so a ConfigMap-driven command line can leave one blank.
        node_selector=dict(parse_node_selector(item) for item in args.node_selector if item),
        tolerations=tuple(parse_toleration(item) for item in args.toleration if item),
        shm_size=args.shm_size,
        retries=args.retries,
        cpu_retries=args.cpu_retries,
        finetune_cpu=args.finetune_cpu,
        finetune_memory=args.finetune_memory,
        cpu_task_cpu=args.cpu_task_cpu,
        cpu_task_memory=args.cpu_task_memory,
        enable_caching=enable_caching,
        finetune_nodes=args.finetune_nodes,
        training_job_kind=args.training_job_kind,
        training_runtime=args.training_runtime,
        training_service_account=args.training_service_account,
    )
