"""``searchtune submit``: compile the pipeline, upload it to Kubeflow Pipelines, start a run.

One run by default; ``--schedule CRON`` creates a recurring run instead (no catch-up,
one run at a time, caching off so every scheduled run sees the new data). ``--dry-run``
prints the requests as JSON and sends nothing.

Each submission uploads the compiled YAML as a new version of one pipeline (created on
the first submission), so every run in the KFP UI links to the exact spec it ran.
"""

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator

from searchtune.errors import SearchtuneError
from searchtune.orchestration import cluster

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "searchtune"
HOST_ENV = "SEARCHTUNE_KFP_HOST"
HEALTHZ_PATH = "/apis/v2beta1/healthz"

# robfig/cron (KFP's scheduler): second minute hour day-of-month month day-of-week.
_CRON_FIELDS = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])}),
    ("day-of-week", 0, 6, {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}),
)
_CRON_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")


def validate_cron(expression: str) -> str:
    """Check a KFP cron expression (6 fields, seconds first) and return it normalised.

    A 5-field (Unix) expression is refused with the corrected one in the message:
    KFP's parser would otherwise read its first field as seconds and run at the wrong times.

    Args:
        expression: e.g. ``0 0 3 * * 1`` (03:00 every Monday) or ``@daily``.
    """
    expression = " ".join(expression.split())
    if expression.startswith("@"):
        word, _, rest = expression.partition(" ")
        if (word in _CRON_DESCRIPTORS and not rest) or (word == "@every" and _GO_DURATION.match(rest)):
            return expression
        raise SearchtuneError(f"--schedule {expression!r}: unknown descriptor; use one of "
                              f"{', '.join(sorted(_CRON_DESCRIPTORS))} or '@every 24h'")
    fields = expression.split(" ")
    if len(fields) == 5:
        raise SearchtuneError(
            f"--schedule {expression!r} has 5 fields, but KFP's cron has 6 with seconds first "
            f"(second minute hour day-of-month month day-of-week): use '0 {expression}'"
        )
    if len(fields) != 6:
        raise SearchtuneError(
            f"--schedule {expression!r} has {len(fields)} fields; KFP's cron needs 6: "
            "second minute hour day-of-month month day-of-week, e.g. '0 0 3 * * *'"
        )
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in text.split(","):
            problem = _cron_part_problem(part.lower(), name, low, high, names)
            if problem:
                raise SearchtuneError(f"--schedule {expression!r}: {name} field {text!r}: {problem}")
    return expression


def _cron_part_problem(part: str, name: str, low: int, high: int, names: dict[str, int]) -> str | None:
    span, has_step, step = part.partition("/")
    if has_step and not (step.isdigit() and int(step) > 0):
        return f"step {step!r} must be a positive number"
    if span in ("*", "?"):
        return None if span == "*" or name in ("day-of-month", "day-of-week") else "'?' only fits day fields"
    bounds = span.split("-")
    if len(bounds) > 2:
        return f"{span!r} is not a value or a range"
    values = []
    for bound in bounds:
        value = names.get(bound, int(bound) if bound.isdigit() else None)
        if value is None or not low <= value <= high:
            return f"{bound!r} is not in {low}-{high}"
        values.append(value)
    if len(values) == 2 and values[0] > values[1]:
        return f"range {span!r} runs backwards"
    return None


def pipeline_inputs(package_path: str) -> dict[str, str]:
    """The compiled pipeline's declared inputs: name -> KFP type (String, Integer, ...).

    Args:
        package_path: The compiled pipeline YAML.
    """
    from kfp import components

    component = components.load_component_from_file(package_path)
    return {name: spec.type for name, spec in (component.component_spec.inputs or {}).items()}


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


def plan(package_path: str, host: str, *, params: list[str] = (), schedule: str | None = None,
         experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None, pipeline_name: str | None = None,
         namespace: str | None = None, service_account: str | None = None,
         pipeline_root: str | None = None) -> Submission:
    """Check the inputs and describe the submission of a compiled pipeline.

    Args:
        package_path: The compiled pipeline YAML.
        host: KFP API endpoint, e.g. ``https://kfp.example.com`` or ``http://localhost:8080``.
        params: ``KEY=VALUE`` pipeline arguments.
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
    submission = Submission(
        host=host.rstrip("/"),
        package_path=package_path,
        package_sha256=digest,
        pipeline_name=name,
        version_name=f"{name}-{stamp}-{digest[:8]}",
        experiment=experiment,
        run_name=run_name or f"{name} {'schedule' if schedule else 'run'} {stamp}",
        parameters=parse_params(list(params), inputs),
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


def _tasks(spec: dict) -> list[dict]:
    """Every task of the pipeline spec, inside conditions too."""
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec.get("components", {}).values() if "dag" in c)]
    return [task for dag in dags for task in dag.get("tasks", {}).values()]


def check_reachable(host: str, timeout: float = 15.0) -> None:
    """Fail fast with one line when nothing answers at the host.

    kfp.Client's own health check retries for ~25 s and logs tracebacks; an HTTP error
    status (401, 403 behind an auth proxy) still means the host is there.

    Args:
        host: KFP API endpoint.
        timeout: Seconds to wait for an answer.
    """
    # No proxy from the environment: kfp.Client's urllib3 pool does not use one either.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        opener.open(host + HEALTHZ_PATH, timeout=timeout).close()
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise SearchtuneError(f"cannot reach the KFP API at {host}: {reason}") from None


@contextlib.contextmanager
def _step(host: str, what: str) -> Iterator[None]:
    """Turn the KFP client's errors during one request into a one-line SearchtuneError."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except kfp_server_api.ApiException as error:
        body = " ".join(str(error.body or "").split())[:300]
        raise SearchtuneError(f"KFP API at {host} refused to {what}: {error.status} {error.reason} {body}") from None
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise SearchtuneError(f"lost the KFP API at {host} while trying to {what}: {error}") from None
    except ValueError as error:  # kfp.Client's own checks, e.g. two pipelines of one name
        raise SearchtuneError(f"cannot {what} on {host}: {error}") from None


def _client(submission: Submission):
    import kfp
    from kfp.client import (
        KF_PIPELINES_SA_TOKEN_ENV,
        KF_PIPELINES_SA_TOKEN_PATH,
        ServiceAccountTokenVolumeCredentials,
    )

    credentials = None
    token_path = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH)
    if os.path.exists(token_path):
        # In a pod with the projected token of manifests/base/cronjob.yaml (multi-user KFP).
        credentials = ServiceAccountTokenVolumeCredentials(token_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
        return kfp.Client(host=submission.host, namespace=submission.namespace or "kubeflow",
                          credentials=credentials)


def send(submission: Submission) -> dict:
    """Upload the pipeline version, then start the run or create the recurring run.

    Args:
        submission: From ``plan``.

    Returns:
        The ids the KFP API gave: pipeline_id, pipeline_version_id, experiment_id and
        run_id or recurring_run_id.
    """
    host = submission.host
    check_reachable(host)
    with _step(host, "connect"):
        client = _client(submission)
    name = submission.pipeline_name
    with _step(host, f"look up pipeline {name!r}"):
        pipeline_id = _find_pipeline(client, name, submission.namespace, host)
    if pipeline_id is None:
        with _step(host, f"upload pipeline {name!r}"):
            pipeline_id = client.upload_pipeline(submission.package_path, pipeline_name=name,
                                                 namespace=submission.namespace).pipeline_id
        with _step(host, f"find the first version of pipeline {name!r}"):
            versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
            version_id = versions.pipeline_versions[0].pipeline_version_id
    else:
        with _step(host, f"upload version {submission.version_name!r} of pipeline {name!r}"):
            version_id = client.upload_pipeline_version(
                submission.package_path, pipeline_version_name=submission.version_name, pipeline_id=pipeline_id
            ).pipeline_version_id
    logger.info("uploaded pipeline %s (id %s) version %s (sha256 %s)", name, pipeline_id, version_id,
                submission.package_sha256[:12])
    with _step(host, f"get or create experiment {submission.experiment!r}"):
        experiment_id = client.create_experiment(submission.experiment, namespace=submission.namespace).experiment_id
    ids = {"pipeline_id": pipeline_id, "pipeline_version_id": version_id, "experiment_id": experiment_id}
    common = {
        "experiment_id": experiment_id,
        "job_name": submission.run_name,
        "params": submission.parameters,
        "pipeline_id": pipeline_id,
        "version_id": version_id,
        "pipeline_root": submission.pipeline_root,
        "service_account": submission.service_account,
    }
    if submission.schedule:
        with _step(host, "create the recurring run"):
            recurring = client.create_recurring_run(cron_expression=submission.schedule, max_concurrency=1,
                                                    no_catchup=True, enabled=True, **common)
        ids["recurring_run_id"] = recurring.recurring_run_id
        logger.info("created recurring run %s (%s) with %d parameter(s)", recurring.recurring_run_id,
                    submission.schedule, len(submission.parameters))
    else:
        with _step(host, "start the run"):
            run = client.run_pipeline(**common)
        ids["run_id"] = run.run_id
        logger.info("started run %s with %d parameter(s)", run.run_id, len(submission.parameters))
    return ids


def _find_pipeline(client, name: str, namespace: str | None, host: str) -> str | None:
    pipeline_filter = json.dumps(
        {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    found = client.list_pipelines(filter=pipeline_filter, namespace=namespace).pipelines or []
    if len(found) > 1:
        raise SearchtuneError(f"{len(found)} pipelines are named {name!r} on {host}; pass --pipeline-name")
    return found[0].pipeline_id if found else None


def compile_package(settings: cluster.ClusterSettings, path: str) -> str:
    """Compile the retraining pipeline with the cluster settings to a YAML file.

    Args:
        settings: Images, GPU and placement of the tasks.
        path: Where the YAML goes.
    """
    from searchtune.cli.run import compile_pipeline

    compile_pipeline(path, settings)
    logger.info("compiled the pipeline to %s (%d bytes)", path, os.path.getsize(path))
    return path


def add_parser(subparsers) -> None:
    """Add ``searchtune submit`` to the CLI.

    Args:
        subparsers: The CLI's sub-command parsers.
    """
    parser = subparsers.add_parser(
        "submit",
        help="upload the pipeline to Kubeflow Pipelines and start a run or a schedule",
        description="Compile the pipeline with the cluster settings, upload it as a new pipeline version, "
                    "then start one run or (--schedule) a recurring run.",
    )
    parser.add_argument("--host", default=os.environ.get(HOST_ENV),
                        help=f"KFP API endpoint, e.g. https://kfp.example.com (default ${HOST_ENV})")
    parser.add_argument("--schedule", metavar="CRON",
                        help="create a recurring run instead: 6-field cron, seconds first, e.g. '0 0 3 * * *'")
    parser.add_argument("--dry-run", action="store_true", help="print what would be sent as JSON, send nothing")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="KFP experiment (default %(default)s)")
    parser.add_argument("--run-name", help="display name of the run or recurring run")
    parser.add_argument("--pipeline-name", help="name the pipeline is uploaded under (default its own name)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="pipeline argument, repeatable (e.g. data=gs://bucket/logs/*.parquet min_auc=0.7)")
    parser.add_argument("--no-cache", action="store_true",
                        help="turn step caching off (always off for --schedule)")
    parser.add_argument("--namespace", help="Kubeflow profile namespace (multi-user KFP; empty = none)")
    parser.add_argument("--service-account", help="Kubernetes service account of the run's pods")
    parser.add_argument("--pipeline-root", help="where the run's artifacts go, e.g. gs://bucket/pipeline-root")
    cluster.add_compile_arguments(parser)
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    """Run ``searchtune submit``.

    Args:
        args: Parsed arguments of the ``submit`` sub-command.
    """
    if not args.host:
        raise SearchtuneError(f"--host is required (or set ${HOST_ENV})")
    if args.schedule:
        validate_cron(args.schedule)  # before the compile, which takes a few seconds
    caching_off = bool(args.schedule) or args.no_cache
    settings = cluster.settings_from_args(args, enable_caching=False if caching_off else None)
    with tempfile.TemporaryDirectory(prefix="searchtune-submit-") as folder:
        package = compile_package(settings, os.path.join(folder, "pipeline.yaml"))
        submission = plan(
            package, args.host, params=args.param, schedule=args.schedule, experiment=args.experiment,
            run_name=args.run_name, pipeline_name=args.pipeline_name,
            # Empty strings (a blank ConfigMap value) mean "not set".
            namespace=args.namespace or None, service_account=args.service_account or None,
            pipeline_root=args.pipeline_root or None,
        )
        if args.dry_run:
            print(json.dumps(submission.to_dict(), indent=2))
            return 0
        ids = send(submission)
    print(json.dumps(ids, indent=2))
    return 0
