"""The notify step: when a run ends, tell a webhook its verdict, the reason and where the report is.

It is the pipeline's exit handler, so it runs after every other step, also when one failed.
KFP does not let an exit handler take the outputs of the steps it watches (they may never
have run), so the step reads the verdict where the run left it: the registry's candidates
log, into which the register step (blessed) or the refusal step (refused) wrote one record
for this run id with the gate metric and its interval, the reason, the version and the
report's location. A failed run has no such record; its reason is the failing step's
one-line message when ``searchtune run`` collected it, otherwise KFP's final status.

The message is Slack-compatible JSON (``{"text": ...}``), which Slack, Mattermost, Rocket.Chat,
Google Chat and Microsoft Teams' workflow webhooks accept. A webhook that cannot be reached
or refuses the message is logged as an error and does not change the run's outcome: a
retrained model is not less valid because a chat service was down.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Literal

from pydantic import BaseModel, ConfigDict

from searchtune.logs import ERROR_FILE_ENV

log = logging.getLogger(__name__)

SUCCEEDED = "SUCCEEDED"  # PipelineTaskFinalStatus.state of a run whose steps all succeeded
CANDIDATES_SEARCHED = 50  # this run's record is among the newest; other runs may have added a few since
POST_ATTEMPTS = 3
POST_TIMEOUT_SECONDS = 10
RETRY_SECONDS = 2.0  # the wait before the second attempt; doubles after


class Verdict(BaseModel):
    """How one run ended, as the notification and the pipeline's outputs tell it."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    model_name: str
    verdict: Literal["BLESSED", "NOT BLESSED", "FAILED", "UNKNOWN"]
    reason: str
    gate_metric: str = ""
    value: float | None = None
    low: float | None = None
    high: float | None = None
    registered_version: int = 0  # 0: nothing registered
    promoted: bool = False
    report: str = ""

    @property
    def gate(self) -> str:
        """The gate metric with its interval, e.g. ``gauc 0.889 [0.854, 0.920]``; '' when unknown."""
        if not self.gate_metric or self.value is None:
            return ""
        interval = f" [{self.low:.3f}, {self.high:.3f}]" if self.low is not None and self.high is not None else ""
        return f"{self.gate_metric} {self.value:.3f}{interval}"

    @property
    def registered(self) -> str:
        if not self.registered_version:
            return "none"
        return f"v{self.registered_version}, " + ("now production" if self.promoted else "not promoted")

    def text(self) -> str:
        """The notification: the verdict first, then one line each for the gate, the version, the reason, the report."""
        lines = [f"searchtune run {self.run_id} ({self.model_name}): {self.verdict}"]
        if self.gate:
            lines.append(f"gate: {self.gate}")
        if self.verdict != "FAILED" or self.registered_version:
            lines.append(f"registered: {self.registered}")
        lines.append(f"reason: {self.reason}")
        lines.append(f"report: {self.report or 'none'}")
        return "\n".join(lines)


def read_verdict(registry_root: str, model_name: str, run_id: str, state: str, error: str = "") -> Verdict:
    """The run's verdict from its final state and its record in the registry's candidates log.

    Never raises for an unreadable registry: the verdict is then UNKNOWN (or FAILED) and the
    reason says why.

    Args:
        registry_root: the registry the register or refusal step wrote to.
        model_name: the model's name in it.
        run_id: the run's id, as the preflight step recorded it.
        state: the run's final state (PipelineTaskFinalStatus.state: SUCCEEDED, FAILED, CANCELLED...).
        error: why the run failed, when it did ('' = not known).
    """
    common = {"run_id": run_id, "model_name": model_name}
    if state != SUCCEEDED:
        # The register and refusal steps record the candidate last: a run that failed has no record to read.
        return Verdict(**common, verdict="FAILED", reason=error or f"the run ended {state}")
    record, problem = _candidate(registry_root, model_name, run_id)
    if record is None:
        return Verdict(**common, verdict="UNKNOWN", reason=f"the run succeeded, but {problem}")
    blessed = record.get("blessed") is True
    return Verdict(**common, verdict="BLESSED" if blessed else "NOT BLESSED", reason=str(record.get("reason") or ""),
                   **_details(record))


def _candidate(registry_root: str, model_name: str, run_id: str) -> tuple[dict | None, str]:
    """This run's newest candidate record, or None and why there is none."""
    from searchtune.registry import ModelRegistry

    try:
        found = ModelRegistry(registry_root).candidates(model_name, limit=CANDIDATES_SEARCHED)
    except Exception as problem:  # noqa: BLE001 - an exit handler that crashes would fail a run that succeeded
        return None, f"the registry's candidates log could not be read ({type(problem).__name__}: {problem})"
    mine = [record for record in found if record.get("run_id") == run_id and "unreadable" not in record]
    if not mine:
        return None, f"the registry's candidates log of {model_name!r} has no record of run {run_id}"
    return mine[0], ""


def _details(record: dict) -> dict:
    def number(key: str) -> float | None:
        value = record.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    version = record.get("version")
    return {"gate_metric": str(record.get("gate_metric") or ""), "value": number("value"), "low": number("low"),
            "high": number("high"), "registered_version": version if isinstance(version, int) else 0,
            "promoted": record.get("promoted") is True, "report": str(record.get("report") or "")}


def failure_reason(status_message: str) -> str:
    """Why the run failed: the failing step's one-line message if ``searchtune run`` collected it, else KFP's."""
    error_file = os.environ.get(ERROR_FILE_ENV)
    if error_file and os.path.exists(error_file):
        with open(error_file, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle if line.strip()]
        if lines:
            return lines[-1]
    return status_message


def shown_url(url: str) -> str:
    """The webhook as logs may show it: scheme and host only (a Slack webhook's path is its secret)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}/..."


def post(url: str, text: str, attempts: int = POST_ATTEMPTS, retry_seconds: float = RETRY_SECONDS,
         timeout: float = POST_TIMEOUT_SECONDS) -> bool:
    """POST ``{"text": text}`` to the webhook; True when it answered 2xx.

    Connection errors, timeouts, 429 and 5xx answers are retried; other answers (the hook
    refuses this message) are not. Never raises: a failure is logged as an error.
    """
    body = json.dumps({"text": text}).encode("utf-8")
    problem, attempt = "", 0
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "searchtune-notify"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                log.info("notify: posted the verdict to %s (HTTP %d)", shown_url(url), response.status)
                return True
        except urllib.error.HTTPError as error:
            problem = f"HTTP {error.code} {error.reason}"
            if error.code != 429 and error.code < 500:
                break
        except (urllib.error.URLError, OSError, ValueError) as error:  # refused, DNS, timeout, a malformed URL
            problem = str(getattr(error, "reason", None) or error)
        if attempt < attempts:
            time.sleep(retry_seconds * 2 ** (attempt - 1))
    log.error("notify: could not post the verdict to %s after %d attempt(s): %s; the run's outcome is unchanged",
              shown_url(url), attempt, problem)
    return False


def notify(webhook_url: str, registry_root: str, model_name: str, run_id: str, state: str, error: str = "") -> Verdict:
    """Work out the run's verdict and post it to the webhook ('' = only log it).

    Args:
        webhook_url: the webhook (http or https); '' = no notification.
        registry_root: the registry the run recorded its candidate in.
        model_name: the model's name in it.
        run_id: the run's id.
        state: the run's final state (SUCCEEDED, FAILED, ...).
        error: why the run failed, when it did.

    Returns:
        The verdict (also the pipeline's outputs).
    """
    verdict = read_verdict(registry_root, model_name, run_id, state, error)
    log.info("notify: %s", verdict.text().replace("\n", "; "))
    if webhook_url:
        post(webhook_url, verdict.text())
    else:
        log.info("notify: no notify_webhook given; nothing posted")
    return verdict
