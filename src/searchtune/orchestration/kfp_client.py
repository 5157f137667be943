"""``searchtune submit``: compile the pipeline, upload it to Kubeflow Pipelines, start a run.

One run by default; with a schedule, a recurring run instead (no catch-up, one run at a
time). Caching can stay on for scheduled runs: the ingest step's cache key includes the
preflight's digest of the input files, so new data is always read (see the pipeline's
docstring). The command itself is ``searchtune.cli.submit``.

Each submission uploads the compiled YAML as a new version of one pipeline (created on
the first submission), so every run in the KFP UI links to the exact spec it ran.
"""

import contextlib
import json
import logging
import os
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator

from searchtune.errors import SearchtuneError
from searchtune.orchestration import cluster
from searchtune.orchestration.submission_plan import Submission

logger = logging.getLogger(__name__)

HOST_ENV = "SEARCHTUNE_KFP_HOST"
HEALTHZ_PATH = "/apis/v2beta1/healthz"

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
        # In a pod with the projected token of manifests/components/git-schedule/cronjob.yaml (multi-user KFP).
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
    from searchtune.orchestration.local_run import compile_pipeline

    compile_pipeline(path, settings)
    logger.info("compiled the pipeline to %s (%d bytes)", path, os.path.getsize(path))
    return path
