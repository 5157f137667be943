"""The Kubernetes side of a multi-node training job: create, watch and delete one TrainJob or PyTorchJob.

The fine-tune task runs in the cluster, so the client uses the pod's service account
(``load_incluster_config``) and its namespace. Its RBAC: ``manifests/base/rbac.yaml``.
What the job holds and how the step uses it: ``orchestration.training_job``.
"""

import dataclasses
import json
import logging
import time
from typing import Any, Literal

from searchtune.errors import SearchtuneError

log = logging.getLogger(__name__)

JobKind = Literal["TrainJob", "PyTorchJob"]
# group, version, plural of each kind in the Kubernetes API
API = {"TrainJob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs"), "PyTorchJob": ("kubeflow.org", "v1", "pytorchjobs")}
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


@dataclasses.dataclass(frozen=True)
class JobState:
    finished: bool
    succeeded: bool
    phase: str  # the newest true condition, e.g. Created, Running, Complete, Failed
    message: str = ""


def job_state(job: dict) -> JobState:
    """Where a TrainJob or PyTorchJob stands, from its status conditions (Trainer: Complete/Failed; operator: Succeeded/Failed)."""
    conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if str(c.get("status")) == "True"]
    by_type = {c.get("type"): c for c in conditions}
    if "Failed" in by_type:
        condition = by_type["Failed"]
        return JobState(True, False, "Failed", f"{condition.get('reason', '')}: {condition.get('message', '')}".strip(": "))
    for done in ("Complete", "Succeeded"):
        if done in by_type:
            return JobState(True, True, done, by_type[done].get("message", ""))
    phase = conditions[-1].get("type", "Pending") if conditions else "Pending"
    return JobState(False, False, phase, conditions[-1].get("message", "") if conditions else "")


class KubernetesJobs:
    """Create, read and delete one kind of training job in one namespace (the ``kubernetes`` client)."""

    def __init__(self, kind: JobKind, namespace: str, api: Any = None):
        self.kind, self.namespace = kind, namespace
        self.group, self.version, self.plural = API[kind]
        if api is None:
            from kubernetes import client, config

            config.load_incluster_config()
            api = client.CustomObjectsApi()
        self.api = api

    def create_or_attach(self, body: dict) -> bool:
        """Create the job; False when a job of that name exists already (a retried task waits for it).

        A job of that name that has failed (an earlier attempt of this task) is deleted and created
        again: its pods resume from the checkpoints.
        """
        from kubernetes.client.exceptions import ApiException

        name = body["metadata"]["name"]
        for _ in range(2):
            try:
                self.api.create_namespaced_custom_object(self.group, self.version, self.namespace, self.plural, body)
                return True
            except ApiException as error:
                if error.status != 409:
                    raise SearchtuneError(f"cannot create {self.kind} {name} in namespace {self.namespace}: "
                                          f"{_api_message(error)}{_hint(error, self.group)}") from None
            state = job_state(self.get(name))
            if not (state.finished and not state.succeeded):
                return False
            log.warning("%s %s failed in an earlier attempt (%s): deleting it and starting it again", self.kind, name,
                        state.message)
            self.delete(name)
            self.wait_gone(name)
        raise SearchtuneError(f"cannot create {self.kind} {name}: a job of that name keeps coming back")

    def get(self, name: str) -> dict:
        """The job; passing API failures are retried, a missing job or a refusal is one line."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        for attempt in range(API_ATTEMPTS):
            try:
                return self.api.get_namespaced_custom_object(self.group, self.version, self.namespace, self.plural, name)
            except ApiException as error:
                if error.status not in TRANSIENT_STATUSES or attempt == API_ATTEMPTS - 1:
                    gone = " (deleted by someone else?)" if error.status == 404 else ""
                    raise SearchtuneError(f"cannot read {self.kind} {name} in namespace {self.namespace}: "
                                          f"{_api_message(error)}{gone}{_hint(error, self.group)}") from None
                problem = f"{error.status} {error.reason}"
            except HTTPError as error:
                if attempt == API_ATTEMPTS - 1:
                    raise SearchtuneError(f"cannot reach the Kubernetes API to read {self.kind} {name}: {error}") from None
                problem = str(error)
            log.warning("reading %s %s failed (%s); retrying in %d s", self.kind, name, problem, 2 ** attempt)
            time.sleep(2 ** attempt)
        raise AssertionError("unreachable")

    def delete(self, name: str) -> bool:
        """Delete the job; False (with a warning) when that fails: the model is safe, the job is only left behind."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            self.api.delete_namespaced_custom_object(self.group, self.version, self.namespace, self.plural, name)
            return True
        except (ApiException, HTTPError) as error:
            reason = _api_message(error) if isinstance(error, ApiException) else str(error)
            log.warning("could not delete %s %s (%s); delete it with kubectl", self.kind, name, reason)
            return False

    def wait_gone(self, name: str, seconds: float = 300) -> None:
        from kubernetes.client.exceptions import ApiException

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.api.get_namespaced_custom_object(self.group, self.version, self.namespace, self.plural, name)
            except ApiException as error:
                if error.status == 404:
                    return
            time.sleep(1)
        raise SearchtuneError(f"{self.kind} {name} was not deleted within {seconds:.0f} s")


API_ATTEMPTS = 8  # 1 + 2 + ... + 64 s: about two minutes of a Kubernetes API that does not answer
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)


def _api_message(error) -> str:
    """The API server's own message (``Status.message``), else the HTTP status."""
    try:
        message = json.loads(error.body or "{}").get("message", "")
    except (TypeError, ValueError):
        message = ""
    return f"{error.status} {error.reason}" + (f": {message}" if message else "")


def _hint(error, group: str) -> str:
    if error.status == 403:
        return " (may the pipeline's service account do this? manifests/base/rbac.yaml)"
    if error.status == 404 and "the server could not find the requested resource" in (error.body or ""):
        return f" (is {group} installed in this cluster?)"
    return ""


def current_namespace() -> str:
    try:
        with open(NAMESPACE_FILE) as handle:
            return handle.read().strip()
    except OSError:
        raise SearchtuneError(f"a multi-node training job is started from inside the cluster; {NAMESPACE_FILE} "
                              "is missing (is this a Kubernetes pod?)") from None
