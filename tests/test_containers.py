"""``searchtune run --runner docker``: what is mounted, what is refused before any step, the runner's settings.

The containerized run itself needs a Docker engine and the built image: ``.ci/containers``
runs it after the tests (``tests/test_container_run.py`` compares it with the subprocess run).
"""

import importlib.util
import os
from pathlib import Path

import pytest

from searchtune.cli.main import main
from searchtune.errors import SearchtuneError
from searchtune.orchestration import containers
from searchtune.orchestration.containers import BindMount
from searchtune.params import RunParameters


def parameters(**values) -> RunParameters:
    return RunParameters(**{"registry_root": "gs://bucket/registry", **values})


def test_local_inputs_are_mounted_read_only_and_the_registry_writable(tmp_path):
    data = tmp_path / "logs"
    data.mkdir()
    (data / "a.csv").write_text("query,product_title,relevance\n")
    registry = tmp_path / "registry"
    registry.mkdir()
    found = containers.mounts(parameters(data=str(data), registry_root=str(registry)))
    assert found == [BindMount(str(data), True), BindMount(str(registry), False)]


def test_gcs_locations_and_hub_model_ids_are_not_mounted(tmp_path):
    found = containers.mounts(parameters(data="gs://bucket/logs/*.csv", base_model="sentence-transformers/all-MiniLM-L6-v2",
                                         checkpoint_root="gs://bucket/checkpoints"))
    assert found == []


def test_a_glob_mounts_its_fixed_folder_and_a_new_registry_its_nearest_parent(tmp_path):
    (tmp_path / "logs").mkdir()
    found = containers.mounts(parameters(data=str(tmp_path / "logs" / "2026-*.csv.gz"),
                                         registry_root=str(tmp_path / "new" / "registry")))
    assert found == [BindMount(str(tmp_path), False), BindMount(str(tmp_path / "logs"), True)]


def test_a_folder_mounted_both_ways_is_writable(tmp_path):
    found = containers.mounts(parameters(data=str(tmp_path), registry_root=str(tmp_path)))
    assert found == [BindMount(str(tmp_path), False)]


def test_paths_are_resolved_through_links_so_the_container_sees_the_same_path(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    resolved = containers.resolved_arguments(parameters(data=str(tmp_path / "link"), registry_root=str(tmp_path / "link")))
    assert resolved.data == resolved.registry_root == str(real)
    assert containers.mounts(parameters(data=str(tmp_path / "link"), registry_root="gs://b/r")) == [BindMount(str(real), True)]


def test_missing_input_is_refused_with_its_flag(tmp_path):
    with pytest.raises(SearchtuneError, match=r"^--data .*nowhere: no such file or folder on this machine$"):
        containers.mounts(parameters(data=str(tmp_path / "nowhere")))


def test_a_link_out_of_a_mounted_folder_is_refused(tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_text("query,product_title,relevance\n")
    data = tmp_path / "logs"
    data.mkdir()
    (data / "linked.csv").symlink_to(outside)
    with pytest.raises(SearchtuneError, match=r"^--data: .*linked.csv links to .*outside.csv, outside .*logs, which the step"):
        containers.mounts(parameters(data=str(data)))


def test_a_link_within_the_folder_is_fine(tmp_path):
    data = tmp_path / "logs"
    data.mkdir()
    (data / "real.csv").write_text("q\n")
    (data / "alias.csv").symlink_to(data / "real.csv")
    assert containers.mounts(parameters(data=str(data))) == [BindMount(str(data), True)]


def test_the_runner_runs_as_the_invoking_user_with_the_mounts_and_environment(tmp_path):
    runner = containers.docker_runner([BindMount(str(tmp_path), True)], {"SEARCHTUNE_PROGRESS_EVENTS": "1"})
    args = runner.container_run_args
    assert args["user"] == f"{os.getuid()}:{os.getgid()}"
    assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in args["mounts"]] == [(str(tmp_path), str(tmp_path), True)]
    assert args["environment"]["HOME"] == "/tmp" and args["environment"]["SEARCHTUNE_PROGRESS_EVENTS"] == "1"
    assert "device_requests" not in args
    assert "device_requests" in containers.docker_runner([], {}, gpus=True).container_run_args


def test_without_gpus_the_finetune_step_runs_in_the_cpu_image():
    settings = containers.cluster_settings("registry.example/searchtune", "dev", gpus=False)
    assert settings.gpu_image == settings.cpu_image == "registry.example/searchtune/searchtune-cpu:dev"
    assert containers.cluster_settings(None, None, gpus=True).gpu_image.endswith("/searchtune-gpu:0.1.0")


def test_the_compiled_tasks_carry_the_images_the_runner_will_start():
    from searchtune.pipelines.retraining_pipeline import build_pipeline

    pipeline = build_pipeline(containers.cluster_settings("registry.example/st", "dev", gpus=False))
    executors = pipeline.pipeline_spec.deployment_spec["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/st/searchtune-cpu:dev"}


def test_no_docker_engine_is_one_line_before_any_step(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    code = main(["run", "--runner", "docker", "--registry", str(tmp_path / "registry"), "--output-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--runner docker: no Docker engine answers" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "registry").exists()


def test_image_options_without_the_docker_runner_are_refused(tmp_path, capsys):
    code = main(["run", "--image-tag", "dev", "--registry", str(tmp_path / "registry"), "--output-dir", str(tmp_path / "runs")])
    assert code == 2
    assert "--image-tag only apply with --runner docker" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_the_source_digest_is_the_same_for_a_checkout_and_an_installed_layout(tmp_path):
    """What ``--runner docker`` compares with the image's: same code, same digest, whatever the layout."""
    import shutil

    from searchtune.orchestration import images

    here = {package: [Path(f) for f in importlib.util.find_spec(package).submodule_search_locations]
            for package in images.CODE_PACKAGES}
    assert images.source_digest() == images.source_digest(here)
    # The layout of an installed wheel (and of the image): components and pipeline inside searchtune/.
    installed = tmp_path / "site" / "searchtune"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(here["searchtune"][0], installed, ignore=ignore)
    for package, name in (("searchtune.components", "components"), ("searchtune.pipelines", "pipelines")):
        shutil.copytree(here[package][0], installed / name, ignore=ignore)
    layout = {"searchtune": [installed], "searchtune.components": [installed / "components"],
              "searchtune.pipelines": [installed / "pipelines"]}
    assert images.source_digest(layout) == images.source_digest()
    pipeline = installed / "pipelines" / "retraining_pipeline.py"
    pipeline.write_text(pipeline.read_text() + "\n# changed\n")
    assert images.source_digest(layout) != images.source_digest()
