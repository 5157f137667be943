"""Cluster settings land in the compiled YAML on the right tasks, and only there."""

import argparse
import json
import os
import re

import pytest
import yaml
from google.protobuf import json_format
from kfp import compiler, components, dsl, local

from searchtune.cli import cluster_flags
from searchtune.errors import SearchtuneError
from searchtune.orchestration import cluster, images
from searchtune.orchestration.cluster import ClusterSettings, Toleration


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
def ingest(rows: int) -> int:
    return rows


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
def tokenize(rows: int) -> int:
    return rows * 2


@dsl.component(base_image=images.GPU_IMAGE, install_kfp_package=False)
def finetune(tokens: int) -> int:
    return tokens + 1


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
def evaluate(model: int) -> bool:
    return model > 0


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
def register(model: int) -> int:
    return model


def small_pipeline(settings: ClusterSettings | None):
    """The retraining DAG's shape: four CPU steps around one training step, register under dsl.If."""

    @dsl.pipeline(name="searchtune-test")
    def pipeline(rows: int = 3):
        ingest_task = ingest(rows=rows)
        tokenize_task = tokenize(rows=ingest_task.output)
        finetune_task = finetune(tokens=tokenize_task.output)
        evaluate_task = evaluate(model=finetune_task.output)
        with dsl.If(evaluate_task.output == True):  # noqa: E712 - KFP builds a condition from ==
            register_task = register(model=finetune_task.output)
        cluster.configure_tasks(
            settings,
            cpu_tasks=[ingest_task, tokenize_task, evaluate_task, register_task],
            finetune_task=finetune_task,
        )

    return pipeline


def compile_and_load(pipeline, path):
    """Compile, then read the YAML back with KFP's own loader (pipeline spec + platform spec)."""
    compiler.Compiler().compile(pipeline, str(path))
    loaded = components.load_component_from_file(str(path))
    spec = json_format.MessageToDict(loaded.pipeline_spec)
    platforms = json_format.MessageToDict(loaded.platform_spec).get("platforms", {})
    platform = platforms.get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    with open(path) as handle:  # the same settings, as plain YAML for anyone reading the file
        assert len(list(yaml.safe_load_all(handle))) == (2 if platform else 1)
    return spec, platform


def executor_of(spec: dict, task: str) -> str:
    """The executor label of a task, wherever in the DAG it sits."""
    components_ = spec["components"]
    root_tasks = spec["root"]["dag"]["tasks"]
    for name, body in root_tasks.items():
        if name == task:
            return components_[body["componentRef"]["name"]]["executorLabel"]
    for comp in components_.values():
        for name, body in comp.get("dag", {}).get("tasks", {}).items():
            if name == task:
                return components_[body["componentRef"]["name"]]["executorLabel"]
    raise KeyError(task)


def task_body(spec: dict, task: str) -> dict:
    for body in [spec["root"]["dag"]["tasks"]] + [c.get("dag", {}).get("tasks", {}) for c in spec["components"].values()]:
        if task in body:
            return body[task]
    raise KeyError(task)


CPU_TASKS = ("ingest", "tokenize", "evaluate", "register")


def test_gpu_placement_shm_and_images_only_on_the_finetune_task(tmp_path):
    settings = ClusterSettings(
        image_prefix="europe-docker.pkg.dev/acme/ml",
        image_tag="2026.11.1",
        gpu_count=2,
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        tolerations=(Toleration("nvidia.com/gpu", "NoSchedule"), Toleration("pool", "NoExecute", "gpu")),
        shm_size="8Gi",
        retries=4,
    )
    spec, platform = compile_and_load(small_pipeline(settings), tmp_path / "p.yaml")

    executors = spec["deploymentSpec"]["executors"]
    train = executor_of(spec, "finetune")
    container = executors[train]["container"]
    assert container["image"] == "europe-docker.pkg.dev/acme/ml/searchtune-gpu:2026.11.1"
    assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert container["resources"]["accelerator"]["resourceCount"] == "2"
    assert container["resources"]["resourceMemoryLimit"] == "16Gi"

    assert set(platform) == {train}, "only the fine-tune executor gets Kubernetes settings"
    assert platform[train]["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert platform[train]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "pool", "operator": "Equal", "value": "gpu", "effect": "NoExecute"},
    ]
    assert platform[train]["emptyDirMounts"] == [
        {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "8Gi"}
    ]
    assert task_body(spec, "finetune")["retryPolicy"]["maxRetryCount"] == 4

    for task in CPU_TASKS:
        cpu = executors[executor_of(spec, task)]["container"]
        assert cpu["image"] == "europe-docker.pkg.dev/acme/ml/searchtune-cpu:2026.11.1", task
        assert "accelerator" not in cpu.get("resources", {}), task
        assert cpu["resources"]["resourceCpuRequest"] == "1", task
        assert task_body(spec, task)["retryPolicy"]["maxRetryCount"] == 1, task


def test_defaults_keep_the_component_images_and_request_one_gpu(tmp_path):
    spec, platform = compile_and_load(small_pipeline(None), tmp_path / "p.yaml")
    executors = spec["deploymentSpec"]["executors"]
    train = executor_of(spec, "finetune")
    assert executors[train]["container"]["image"] == images.GPU_IMAGE
    assert executors[train]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    assert executors[executor_of(spec, "ingest")]["container"]["image"] == images.CPU_IMAGE
    assert set(platform) == {train}
    assert "nodeSelector" not in platform[train] and "tolerations" not in platform[train]
    assert platform[train]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    assert all(task_body(spec, t)["cachingOptions"].get("enableCache") for t in CPU_TASKS + ("finetune",))


def test_cpu_training_and_caching_off(tmp_path):
    settings = ClusterSettings(gpu_count=0, enable_caching=False, image_tag="dev")
    spec, _ = compile_and_load(small_pipeline(settings), tmp_path / "p.yaml")
    container = spec["deploymentSpec"]["executors"][executor_of(spec, "finetune")]["container"]
    assert "accelerator" not in container["resources"]
    assert container["image"] == images.image(images.GPU_IMAGE_NAME, images.IMAGE_PREFIX, "dev")
    for task in CPU_TASKS + ("finetune",):
        assert not task_body(spec, task)["cachingOptions"].get("enableCache"), task


def test_default_settings_run_under_kfp_local(tmp_path, monkeypatch):
    """kfp.local ignores images, accelerators, node placement and retries: the local run still works."""
    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    small_pipeline(ClusterSettings())(rows=5)  # raises if any task fails
    (run,) = os.listdir(tmp_path / "root")
    with open(tmp_path / "root" / run / "register" / "executor_output.json") as handle:
        # rows=5 -> tokenize 10 -> finetune 11 -> evaluate True -> register returns 11
        assert json.load(handle) == {"parameterValues": {"Output": 11}}


def parse(*argv: str) -> ClusterSettings:
    parser = argparse.ArgumentParser()
    cluster_flags.add_compile_arguments(parser)
    return cluster_flags.settings_from_args(parser.parse_args(list(argv)))


def test_compile_arguments_build_the_settings():
    settings = parse(
        "--image-prefix", "ghcr.io/acme", "--image-tag", "1.2.3", "--gpu-count", "4",
        "--accelerator-type", "NVIDIA_L4",
        "--node-selector", "cloud.google.com/gke-accelerator=nvidia-l4",
        "--node-selector", "cloud.google.com/gke-spot=true",
        "--toleration", "nvidia.com/gpu=present:NoSchedule", "--toleration", "cloud.google.com/gke-spot:NoSchedule",
        "--retries", "5", "--shm-size", "16Gi",
    )
    assert settings.gpu_image == "ghcr.io/acme/searchtune-gpu:1.2.3"
    assert settings.cpu_image == "ghcr.io/acme/searchtune-cpu:1.2.3"
    assert settings.gpu_count == 4 and settings.accelerator_type == "NVIDIA_L4"
    assert settings.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-l4", "cloud.google.com/gke-spot": "true"}
    assert settings.tolerations == (
        Toleration("nvidia.com/gpu", "NoSchedule", "present"),
        Toleration("cloud.google.com/gke-spot", "NoSchedule"),
    )
    assert settings.retries == 5 and settings.shm_size == "16Gi"
    assert parse().gpu_count == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--toleration", "nvidia.com/gpu"], "expected KEY[=VALUE]:EFFECT"),
        (["--toleration", "nvidia.com/gpu:NoScheduel"], "must be one of NoSchedule"),
        (["--node-selector", "gpu"], "expected KEY=VALUE"),
        (["--node-selector", "bad key=x"], "not a Kubernetes label key"),
        (["--gpu-count", "-1"], "--gpu-count must be 0 or more"),
        (["--finetune-memory", "16 GB"], "not a Kubernetes quantity"),
        (["--image-tag", ""], "--image-tag must be a non-empty word"),
    ],
)
def test_bad_compile_arguments_name_the_problem(argv, message):
    with pytest.raises(SearchtuneError, match=re.escape(message)) as caught:
        parse(*argv)
    assert "\n" not in str(caught.value)


def test_real_retraining_pipeline_compiles_with_cluster_settings(tmp_path):
    """searchtune's own pipeline: the GPU and placement settings land on its fine-tune task only."""
    from searchtune.pipelines.retraining_pipeline import build_pipeline

    settings = ClusterSettings(
        image_prefix="europe-docker.pkg.dev/acme/ml",
        image_tag="0.1.0",
        gpu_count=1,
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        tolerations=(Toleration("nvidia.com/gpu", "NoSchedule"),),
        enable_caching=False,
    )
    spec, platform = compile_and_load(build_pipeline(settings), tmp_path / "pipeline.yaml")
    executors = spec["deploymentSpec"]["executors"]
    train = executor_of(spec, "finetune")
    assert set(platform) == {train}
    assert platform[train]["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert platform[train]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert platform[train]["emptyDirMounts"][0] == {
        "volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "2Gi"}
    assert executors[train]["container"]["image"] == "europe-docker.pkg.dev/acme/ml/searchtune-gpu:0.1.0"
    assert executors[train]["container"]["resources"]["accelerator"] == {
        "type": "nvidia.com/gpu", "count": "1", "resourceType": "nvidia.com/gpu", "resourceCount": "1"}
    assert task_body(spec, "finetune")["retryPolicy"]["maxRetryCount"] == 3
    for task in CPU_TASKS:
        container = executors[executor_of(spec, task)]["container"]
        assert container["image"] == "europe-docker.pkg.dev/acme/ml/searchtune-cpu:0.1.0", task
        assert "accelerator" not in container["resources"], task
        assert not task_body(spec, task)["cachingOptions"].get("enableCache"), task
