"""What ``searchtune submit`` sends, planned and checked before anything is sent.

``plan`` reads the compiled pipeline, types and checks the arguments against its inputs
and describes the upload and the run (or recurring run) as a ``Submission``; ``--dry-run``
prints exactly that. ``searchtune.orchestration.kfp_client.send`` then sends it.
"""

import dataclasses
import datetime
import hashlib
import json
import logging
import re

from searchtune.errors import SearchtuneError
from searchtune.orchestration.cron import validate_cron

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "searchtune"


def pipeline_inputs(package_path: str) -> dict[str, str]:
    """The compiled pipeline's declared inputs: name -> KFP type (String, Integer, ...).

    Args:
        package_path: The compiled pipeline YAML.
    """
    from kfp import components

    component = components.load_component_from_file(package_path)
    return {name: spec.type for name, spec in (component.component_spec.inputs or {}).items()}


def required_inputs(package_path: str) -> list[str]:
    """The compiled pipeline's inputs without a default: a run must give each a value.

    Args:
        package_path: The compiled pipeline YAML.
    """
    from kfp import components

    component = components.load_component_from_file(package_path)
    return [name for name, spec in (component.component_spec.inputs or {}).items()
            if spec.default is None and not spec.optional]


def parse_params(items: list[str], inputs: dict[str, str]) -> dict:
    """Turn ``KEY=VALUE`` options into typed pipeline arguments, checked against the inputs.

    Args:
        items: The ``--param`` values.
        inputs: The pipeline's inputs from ``pipeline_inputs``.
    """
    params: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SearchtuneError(f"--param {item!r}: expected KEY=VALUE")
        if key not in inputs:
            raise SearchtuneError(f"--param {key}: the pipeline has no input of that name; "
                                  f"its inputs are {', '.join(sorted(inputs))}")
        if key in params:
            raise SearchtuneError(f"--param {key} is given twice")
        params[key] = _typed(key, text, inputs[key])
    return params


def _typed(key: str, text: str, kind: str):
    try:
        if kind == "Integer":
            return int(text)
        if kind == "Float":
            return float(text)
        if kind == "Boolean":
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        if kind in ("List", "Dict"):
            value = json.loads(text)
            if not isinstance(value, list if kind == "List" else dict):
                raise ValueError(text)
            return value
    except ValueError:
        raise SearchtuneError(f"--param {key}={text!r}: the pipeline wants a {kind}") from None
    return text


@dataclasses.dataclass
class Submission:
    """Everything ``send`` sends: printed as JSON by ``--dry-run``."""

    host: str
    package_path: str
    package_sha256: str
    pipeline_name: str
    version_name: str
    experiment: str
    run_name: str
    parameters: dict
    images: list[str]
    schedule: str | None = None
    enable_caching: bool = True
    namespace: str | None = None
    service_account: str | None = None
    pipeline_root: str | None = None

    def to_dict(self) -> dict:
        run = {
            "display_name": self.run_name,
            "parameters": self.parameters,
            "enable_caching": self.enable_caching,
            "service_account": self.service_account,
            "pipeline_root": self.pipeline_root,
        }
        if self.schedule:
            run.update(cron_expression=self.schedule, max_concurrency=1, no_catchup=True)
        return {
            "host": self.host,
            "pipeline": {
                "name": self.pipeline_name,
                "version": self.version_name,
                "sha256": self.package_sha256,
                "images": self.images,
            },
            "experiment": self.experiment,
            "namespace": self.namespace,
            ("recurring_run" if self.schedule else "run"): run,
        }


def plan(package_path: str, host: str, *, arguments: dict | None = None, params: list[str] = (), schedule: str | None = None,
         experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None, pipeline_name: str | None = None,
         namespace: str | None = None, service_account: str | None = None,
         pipeline_root: str | None = None) -> Submission:
    """Check the inputs and describe the submission of a compiled pipeline.

    Args:
        package_path: The compiled pipeline YAML.
        host: KFP API endpoint, e.g. ``https://kfp.example.com`` or ``http://localhost:8080``.
        arguments: typed pipeline arguments (already checked against ``searchtune.params``).
        params: raw ``KEY=VALUE`` pipeline arguments, typed by the compiled pipeline's inputs.
        schedule: A 6-field cron for a recurring run; None starts one run.
        experiment: KFP experiment (created if absent).
        run_name: Display name of the run; default pipeline name + time.
        pipeline_name: Name the pipeline is uploaded under; default its compiled name.
        namespace: Kubeflow profile namespace (multi-user KFP).
        service_account: Kubernetes service account the run's pods use.
        pipeline_root: Where the run's artifacts go (e.g. ``gs://bucket/pipeline-root``).
    """
    if not re.match(r"^https?://[^\s/]+", host):
        raise SearchtuneError(f"--host {host!r} must be an http:// or https:// URL of the KFP API")
    schedule = validate_cron(schedule) if schedule else None
    import yaml

    with open(package_path, "rb") as handle:
        raw = handle.read()
    spec = next(yaml.safe_load_all(raw))
    name = pipeline_name or spec["pipelineInfo"]["name"]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    digest = hashlib.sha256(raw).hexdigest()
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    inputs = pipeline_inputs(package_path)
    parameters = _merge(arguments or {}, parse_params(list(params), inputs), inputs)
    missing = [name for name in required_inputs(package_path) if parameters.get(name) in (None, "")]
    if missing:
        raise SearchtuneError(f"the pipeline has no default for {', '.join(missing)}: give each a value "
                              f"(e.g. --param {missing[0]}=...)")
    submission = Submission(
        host=host.rstrip("/"),
        package_path=package_path,
        package_sha256=digest,
        pipeline_name=name,
        version_name=f"{name}-{stamp}-{digest[:8]}",
        experiment=experiment,
        run_name=run_name or f"{name} {'schedule' if schedule else 'run'} {stamp}",
        parameters=parameters,
        images=sorted({e["container"]["image"] for e in executors.values() if "container" in e}),
        schedule=schedule,
        # Caching is compiled into the spec (ClusterSettings.enable_caching): report what it says.
        enable_caching=any(task.get("cachingOptions", {}).get("enableCache", False) for task in _tasks(spec)),
        namespace=namespace,
        service_account=service_account,
        pipeline_root=pipeline_root,
    )
    logger.info("pipeline %s: %d bytes, images %s, %d of %d inputs set", submission.pipeline_name, len(raw),
                ", ".join(submission.images), len(submission.parameters), len(inputs))
    return submission


def _merge(arguments: dict, raw: dict, inputs: dict[str, str]) -> dict:
    unknown = sorted(set(arguments) - set(inputs))
    if unknown:
        raise SearchtuneError(f"the compiled pipeline has no input {', '.join(unknown)}")
    both = sorted(set(arguments) & set(raw))
    if both:
        raise SearchtuneError(f"{', '.join(both)} given both as a flag and as --param")
    return {**arguments, **raw}


def _tasks(spec: dict) -> list[dict]:
    """Every task of the pipeline spec, inside conditions too."""
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec.get("components", {}).values() if "dag" in c)]
    return [task for dag in dags for task in dag.get("tasks", {}).values()]
