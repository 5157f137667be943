"""Multi-node fine-tuning started by the pipeline (``orchestration.training_job``).

- The TrainJob and PyTorchJob the fine-tune task creates validate against the same schemas
  as the manifests (tests/test_manifests.py), and ``manifests/training/`` is exactly this
  module's output for the example settings, so the documented files cannot drift.
- ``--finetune-nodes 2`` compiles a fine-tune task that holds no GPU and carries the job.
- The wait: the job's status conditions as Kubeflow Trainer and the Training Operator write
  them, and the whole launcher on this machine. There is no Kubernetes here, so
  ``OneNodeCluster`` takes the Kubernetes API's place: it keeps the created object and runs
  its pod command (torchrun on the rank entry point, data and model in gs:// on the GCS
  emulator) as one standalone node, and reports the conditions the controllers report.
  What it does not test: scheduling, the runtime's rendezvous across nodes, RBAC.
"""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.orchestration import cluster, images, kubernetes_jobs, training_job
from searchtune.orchestration.cluster import ClusterSettings, Toleration
from searchtune.params import TrainParams

sys.path.insert(0, os.path.dirname(__file__))  # tests/ is no package (pytest --import-mode=importlib)
from test_cluster import compile_and_load, executor_of, small_pipeline  # noqa: E402
from test_manifests import MANIFESTS, validate  # noqa: E402

EXAMPLE_ARGUMENTS = training_job.rank_arguments(
    "gs://acme-ml-search/pipeline-root/RUN/tokenize/tokenized", "gs://acme-ml-search/models/searchtune-relevance-multinode",
    "gs://acme-ml-search/checkpoints/searchtune-relevance-multinode", TrainParams(max_batch_tokens=32768))


def example_spec(kind: str) -> training_job.TrainingJobSpec:
    settings = ClusterSettings(gpu_count=8, finetune_nodes=2, training_job_kind=kind, finetune_cpu="16",
                               finetune_memory="64Gi", shm_size="16Gi", tolerations=(Toleration("nvidia.com/gpu", "NoSchedule"),))
    return cluster.training_job_spec(settings)


@pytest.mark.parametrize(("kind", "file"), [("TrainJob", "trainjob.yaml"), ("PyTorchJob", "pytorchjob.yaml")])
def test_the_documented_manifests_are_what_the_pipeline_creates(kind, file):
    written = yaml.safe_load((MANIFESTS / "training" / file).read_text())
    assert training_job.manifest(example_spec(kind), "searchtune-finetune", EXAMPLE_ARGUMENTS) == written


@pytest.mark.parametrize("kind", ["TrainJob", "PyTorchJob"])
@pytest.mark.parametrize("settings", [
    {"gpu_count": 1, "finetune_nodes": 4},
    {"gpu_count": 2, "finetune_nodes": 3, "shm_size": None, "finetune_cpu": None, "finetune_memory": None,
     "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
     "tolerations": (Toleration("pool", "NoExecute", "gpu"),)},
])
def test_every_job_the_pipeline_can_create_validates(kind, settings):
    spec = cluster.training_job_spec(ClusterSettings(training_job_kind=kind, **settings))
    config = TrainParams(epochs=2, init_from="7", processes_per_node=2)
    arguments = training_job.rank_arguments("gs://b/tok", "gs://b/model-job", "gs://b/ckpt", config, "gs://b/registry", "m")
    assert "--param=processes_per_node=2" not in arguments, "the job's pods start one rank per GPU themselves"
    assert {"--registry-root=gs://b/registry", "--model-name=m", "--param=init_from=7"} <= set(arguments)
    job = training_job.manifest(spec, training_job.job_name("gs://b/root/run-1/finetune/model"), arguments)
    validate(job)
    text = json.dumps(job)
    assert ('"Worker"' in text) == (kind == "PyTorchJob")
    broken = copy.deepcopy(job)
    broken["spec"]["unknown"] = 1
    with pytest.raises(Exception, match="unknown"):
        validate(broken)


def test_job_names_are_kubernetes_names_stable_per_task_and_distinct_per_run():
    uri = "gs://b/pipeline-root/searchtune-retraining/" + "x" * 200 + "/finetune/model"
    name = training_job.job_name(uri)
    assert name == training_job.job_name(uri) and len(name) <= 40
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    assert name != training_job.job_name(uri.replace("x" * 200, "y" * 200))


def compiled_finetune(tmp_path, settings: ClusterSettings) -> tuple[dict, dict]:
    spec, platform = compile_and_load(small_pipeline(settings), tmp_path / "p.yaml")
    executor = executor_of(spec, "finetune")
    return spec["deploymentSpec"]["executors"][executor]["container"], platform.get(executor, {})


def test_finetune_nodes_compile_a_launcher_that_holds_no_gpu(tmp_path):
    settings = ClusterSettings(gpu_count=8, finetune_nodes=4, training_job_kind="PyTorchJob", image_tag="2026.12.1",
                               node_selector={"pool": "h100"})
    container, platform = compiled_finetune(tmp_path, settings)
    assert "accelerator" not in container["resources"] and container["resources"]["resourceCpuRequest"] == "1"
    assert platform == {}, "placement and /dev/shm belong to the job's pods, not to the launcher"
    (env,) = [e for e in container["env"] if e["name"] == training_job.ENV_VARIABLE]
    spec = training_job.TrainingJobSpec.from_json(env["value"])
    assert spec == cluster.training_job_spec(settings)
    assert (spec.kind, spec.nodes, spec.gpus_per_node, spec.node_selector) == ("PyTorchJob", 4, 8, {"pool": "h100"})
    assert spec.image == images.image(images.GPU_IMAGE_NAME, images.IMAGE_PREFIX, "2026.12.1")
    one_node, _ = compiled_finetune(tmp_path, ClusterSettings(gpu_count=8))
    assert not [e for e in one_node.get("env", []) if e["name"] == training_job.ENV_VARIABLE]


@pytest.mark.parametrize(("settings", "message"), [
    ({"finetune_nodes": 0}, "--finetune-nodes must be 1 or more, got 0"),
    ({"finetune_nodes": 2, "training_job_kind": "MPIJob"}, "--training-job-kind must be one of TrainJob, PyTorchJob"),
    ({"finetune_nodes": 2, "accelerator_type": "NVIDIA_H100_80GB"}, "Vertex AI Pipelines cannot start one"),
    ({"finetune_nodes": 2, "training_runtime": "Torch Distributed"}, "--training-runtime 'Torch Distributed' is not"),
    ({"finetune_nodes": 2, "training_service_account": "Search_Tune"}, "--training-service-account 'Search_Tune' is not a "
                                                                        "Kubernetes object name"),
])
def test_bad_multinode_settings_are_refused_at_compile_time(settings, message):
    with pytest.raises(SearchtuneError, match=message):
        ClusterSettings(**settings)


def condition(kind: str, reason: str = "", message: str = "", status: str = "True") -> dict:
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": "2026-12-07T05:00:00Z"}


@pytest.mark.parametrize(("status", "expected"), [
    ({}, (False, False, "Pending")),
    ({"conditions": [condition("Created")]}, (False, False, "Created")),
    ({"conditions": [condition("Created"), condition("Running")]}, (False, False, "Running")),
    ({"conditions": [condition("Created"), condition("Running", status="False"), condition("Restarting")]},
     (False, False, "Restarting")),
    ({"conditions": [condition("Suspended", "Suspended")]}, (False, False, "Suspended")),
    ({"conditions": [condition("Complete", "JobsCompleted", "jobset completed")]}, (True, True, "Complete")),  # Trainer
    ({"conditions": [condition("Created"), condition("Running", status="False"), condition("Succeeded")]},
     (True, True, "Succeeded")),  # Training Operator
    ({"conditions": [condition("Running", status="False"), condition("Failed", "JobsFailed", "node-0 exited with 1")]},
     (True, False, "Failed")),
])
def test_job_state_reads_the_controllers_conditions(status, expected):
    state = training_job.job_state({"status": status})
    assert (state.finished, state.succeeded, state.phase) == expected
    if state.phase == "Failed":
        assert state.message == "JobsFailed: node-0 exited with 1"


class OneNodeCluster:
    """The Kubernetes API's custom objects, on this machine: a created job's pod command runs here as one standalone
    node (torchrun --standalone instead of the runtime's rendezvous); its conditions are what the controllers write."""

    def __init__(self, workdir: Path):
        self.workdir, self.jobs, self.created = workdir, {}, 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        assert (group, version, plural) == training_job.API[body["kind"]] and namespace == "ml-search"
        validate(body)
        trainer = body["spec"]["trainer"] if body["kind"] == "TrainJob" else \
            body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
        command = [c for c in trainer["command"] + trainer["args"] if not c.startswith("--master-")]
        assert command[0] == "torchrun"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", *command[1:]]
        log = open(self.workdir / f"{name}.log", "w")
        self.jobs[name] = {"body": body, "process": subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)}
        self.created += 1

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if name not in self.jobs:
            raise ApiException(status=404, reason="Not Found")
        job = self.jobs[name]
        returncode = job["process"].poll()
        done = "Complete" if job["body"]["kind"] == "TrainJob" else "Succeeded"
        conditions = [condition("Created")]
        if returncode == 0:
            conditions.append(condition(done, "JobsCompleted"))
        elif returncode is not None:
            tail = (self.workdir / f"{name}.log").read_text().strip().splitlines()[-1:]
            conditions.append(condition("Failed", "JobsFailed", f"exit code {returncode}: {' '.join(tail)}"))
        return {**job["body"], "status": {"conditions": conditions}}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        if name not in self.jobs:
            raise ApiException(status=404, reason="Not Found")
        self.jobs.pop(name)["process"].wait()


@pytest.fixture(scope="module")
def tokenized_in_bucket(tmp_path_factory, gcs_emulator) -> str:
    from searchtune.data import sample_data
    from searchtune.params import IngestParams, ModelParams
    from searchtune.steps import ingest, tokenize

    folder = tmp_path_factory.mktemp("job-data")
    sample_data.generate_judgements(n_queries=120, seed=3).to_parquet(folder / "judgements.parquet")
    ingest.ingest(str(folder / "splits"), IngestParams(data=str(folder / "judgements.parquet")))
    tokenize.tokenize(str(folder / "splits"), str(folder / "tokenized"), ModelParams(max_length=24))
    bucket = f"gs://{gcs_emulator.new_bucket()}"
    storage.copy_tree(str(folder / "tokenized"), f"{bucket}/pipeline-root/run/tokenize/tokenized")
    return bucket


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["TrainJob", "PyTorchJob"])
def test_the_launcher_creates_the_job_waits_and_takes_its_model(kind, tokenized_in_bucket, tmp_path):
    bucket = tokenized_in_bucket
    spec = cluster.training_job_spec(ClusterSettings(gpu_count=0, finetune_nodes=2, training_job_kind=kind))
    api = OneNodeCluster(tmp_path)
    jobs = training_job.KubernetesJobs(kind, "ml-search", api=api)
    config = TrainParams(max_length=24, epochs=1, max_train_rows=64, batch_size=16, seed=5)
    run = {"tokenized_uri": f"{bucket}/pipeline-root/run/tokenize/tokenized", "model_uri": f"{bucket}/pipeline-root/run-1/{kind}/model",
           "config": config, "checkpoint_uri": f"{bucket}/checkpoints/{kind}", "poll_seconds": 0.2}
    record = training_job.train(spec, jobs, model_dir=str(tmp_path / "model"), **run)
    assert record.train_rows == 64 and record.training["seed"] == 5
    assert records.ModelRecord.read(str(tmp_path / "model")) == record
    assert api.jobs == {}, "a finished job is deleted"
    assert storage.list_prefix(f"{run['model_uri']}-job") == [], "and so is the model it wrote, now in the artifact"
    if kind == "PyTorchJob":
        return  # what follows does not depend on the kind

    # A retried launcher (its pod preempted while it waited) finds the job and waits for it instead of starting another.
    retried = {**run, "model_uri": f"{bucket}/pipeline-root/run-2/{kind}/model", "checkpoint_uri": f"{bucket}/retried/ckpt"}
    api.create_namespaced_custom_object(*training_job.API[kind][:2], "ml-search", training_job.API[kind][2], training_job.manifest(
        spec, training_job.job_name(retried["model_uri"]),
        training_job.rank_arguments(run["tokenized_uri"], retried["model_uri"] + "-job", retried["checkpoint_uri"], config)))
    again = training_job.train(spec, jobs, **retried, model_dir=str(tmp_path / "again"))
    assert api.created == 2 and again.train_rows == 64

    # A failing job fails the step, naming the job, and is kept for kubectl ...
    bad = {**run, "model_uri": f"{bucket}/pipeline-root/run-3/{kind}/model", "tokenized_uri": f"{bucket}/not-yet-tokenized"}
    with pytest.raises(SearchtuneError, match=rf"{kind} searchtune-ft-\w+ failed: JobsFailed: exit code 1.*kept for "
                                              rf"`kubectl describe {kind.lower()}"):
        training_job.train(spec, jobs, **bad, model_dir=str(tmp_path / "bad"))
    assert list(api.jobs) == [training_job.job_name(bad["model_uri"])]
    assert not (tmp_path / "bad").exists()
    # ... until a retry of the step replaces it with a new job (here: the data is there now).
    storage.copy_tree(run["tokenized_uri"], f"{bucket}/not-yet-tokenized")
    fixed = training_job.train(spec, jobs, **bad, model_dir=str(tmp_path / "fixed"))
    assert api.created == 4 and fixed.train_rows == 64 and api.jobs == {}


class FlakyAPI(OneNodeCluster):
    """The API server answering some reads with the passing failures of a busy control plane."""

    def __init__(self, workdir: Path, failures: list[int]):
        super().__init__(workdir)
        self.failures = failures

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if self.failures:
            raise ApiException(status=self.failures.pop(0), reason="Unavailable")
        return super().get_namespaced_custom_object(group, version, namespace, plural, name)


def test_passing_api_failures_are_retried_and_the_rest_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(kubernetes_jobs.time, "sleep", lambda seconds: None)  # the back-off, not the behaviour
    api = FlakyAPI(tmp_path, [503, 429, 500])
    api.jobs["j"] = {"body": {"kind": "TrainJob"}, "process": subprocess.Popen([sys.executable, "-c", "pass"])}
    api.jobs["j"]["process"].wait()
    jobs = training_job.KubernetesJobs("TrainJob", "ml-search", api=api)
    assert training_job.job_state(jobs.get("j")).succeeded and api.failures == []
    with pytest.raises(SearchtuneError, match=r"^cannot read TrainJob gone in namespace ml-search: 404 Not Found "
                                              r"\(deleted by someone else\?\)$"):
        training_job.KubernetesJobs("TrainJob", "ml-search", api=_Refusing(404)).get("gone")
    with pytest.raises(SearchtuneError, match=r"403 Forbidden: trainjobs is forbidden.*manifests/base/rbac.yaml"):
        training_job.KubernetesJobs("TrainJob", "ml-search", api=_Refusing(403)).create_or_attach({"metadata": {"name": "x"}})
    assert training_job.KubernetesJobs("TrainJob", "ml-search", api=_Refusing(403)).delete("x") is False  # warned, not fatal


class _Refusing:
    """An API server that answers every call with one HTTP error and its Status body."""

    def __init__(self, status: int):
        self.status = status

    def _refuse(self, *args, **kwargs):
        reason = {403: "Forbidden", 404: "Not Found"}[self.status]
        error = ApiException(status=self.status, reason=reason)
        if self.status == 403:
            error.body = json.dumps({"kind": "Status", "message": 'trainjobs is forbidden: User "system:serviceaccount:x" '
                                                                    "cannot create resource"})
        raise error

    create_namespaced_custom_object = get_namespaced_custom_object = delete_namespaced_custom_object = _refuse


def test_the_pipeline_runner_may_create_watch_and_delete_both_kinds_of_job():
    (runner,) = [doc for doc in yaml.safe_load_all((MANIFESTS / "base" / "rbac.yaml").read_text())
                 if doc["kind"] == "Role" and doc["metadata"]["name"] == "searchtune-pipeline-runner"]
    for group, _, plural in training_job.API.values():
        verbs = {verb for rule in runner["rules"] if group in rule["apiGroups"] and plural in rule["resources"]
                 for verb in rule["verbs"]}
        assert {"create", "get", "delete"} <= verbs, plural


def test_multinode_training_refuses_locations_the_nodes_cannot_reach(tmp_path):
    spec = cluster.training_job_spec(ClusterSettings(finetune_nodes=2))
    jobs = training_job.KubernetesJobs("TrainJob", "ml-search", api=OneNodeCluster(tmp_path))
    with pytest.raises(SearchtuneError, match=r"needs the tokenized data in gs://, where every node reaches it; it is at "
                                              r"s3://minio/pipeline-root/tokenized"):
        training_job.train(spec, jobs, tokenized_uri="s3://minio/pipeline-root/tokenized", model_uri="gs://b/model",
                           model_dir=str(tmp_path / "model"), config=TrainParams(), checkpoint_uri="gs://b/ckpt")
    with pytest.raises(SearchtuneError, match=r"needs the checkpoints in gs://.*it is at \(nowhere\)"):
        training_job.train(spec, jobs, tokenized_uri="gs://b/tok", model_uri="gs://b/model",
                           model_dir=str(tmp_path / "model"), config=TrainParams(), checkpoint_uri="")
    with pytest.raises(SearchtuneError, match=r"needs the registry init_from reads in gs://.*it is at /srv/registry"):
        training_job.train(spec, jobs, tokenized_uri="gs://b/tok", model_uri="gs://b/model", model_dir=str(tmp_path / "model"),
                           config=TrainParams(init_from="3"), checkpoint_uri="gs://b/ckpt", registry_root="/srv/registry")
