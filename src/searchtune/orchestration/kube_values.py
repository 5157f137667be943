"""Kubernetes values as the API checks them: label keys and values, taints and tolerations, quantities, durations.

``searchtune compile`` refuses a bad value in one line naming the flag, instead of the
cluster refusing the compiled pipeline at run time.
"""

import dataclasses
import re

from searchtune.errors import SearchtuneError

TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

# Kubernetes label keys: an optional DNS-subdomain prefix and a name of at most 63 chars.
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
# Object names (DNS-1123 subdomains): service accounts, training runtimes.
OBJECT_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# The quantity forms KFP's set_cpu_*/set_memory_* accept.
CPU_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?m?$")
MEMORY_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")
DURATION = re.compile(r"^[0-9]+(s|m|h)$")


@dataclasses.dataclass(frozen=True)
class Toleration:
    """A Kubernetes toleration: ``key=value:effect`` (operator Equal) or ``key:effect`` (Exists)."""

    key: str
    effect: str
    value: str | None = None

    @property
    def operator(self) -> str:
        return "Exists" if self.value is None else "Equal"


def check_label(key: str, value: str) -> None:
    if not LABEL_KEY.match(key) or len(key) > 317:
        raise SearchtuneError(f"node selector key {key!r} is not a Kubernetes label key")
    if not LABEL_VALUE.match(value):
        raise SearchtuneError(f"node selector value {value!r} (key {key!r}) is not a Kubernetes label value")


def check_toleration(toleration: Toleration) -> None:
    if not LABEL_KEY.match(toleration.key):
        raise SearchtuneError(f"toleration key {toleration.key!r} is not a Kubernetes taint key")
    if toleration.effect not in TOLERATION_EFFECTS:
        raise SearchtuneError(
            f"toleration effect {toleration.effect!r} (key {toleration.key!r}) must be one of {', '.join(TOLERATION_EFFECTS)}"
        )
    if toleration.value is not None and not LABEL_VALUE.match(toleration.value):
        raise SearchtuneError(f"toleration value {toleration.value!r} (key {toleration.key!r}) is not a taint value")


def check_quantity(name: str, value: str | None, pattern: re.Pattern) -> None:
    if value is not None and not pattern.match(value):
        raise SearchtuneError(f"{name} {value!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")


def parse_node_selector(text: str) -> tuple[str, str]:
    """Parse ``KEY=VALUE`` into a (key, value) pair.

    Args:
        text: The option's value, e.g. ``cloud.google.com/gke-accelerator=nvidia-l4``.
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SearchtuneError(f"--node-selector {text!r}: expected KEY=VALUE")
    check_label(key, value)
    return key, value


def parse_toleration(text: str) -> Toleration:
    """Parse ``KEY[=VALUE]:EFFECT`` into a Toleration (``Equal`` with a value, else ``Exists``).

    Args:
        text: The option's value, e.g. ``nvidia.com/gpu=present:NoSchedule`` or
            ``cloud.google.com/gke-spot:NoSchedule``.
    """
    head, sep, effect = text.rpartition(":")
    if not sep or not head:
        raise SearchtuneError(f"--toleration {text!r}: expected KEY[=VALUE]:EFFECT with EFFECT one of "
                              f"{', '.join(TOLERATION_EFFECTS)}")
    key, has_value, value = head.partition("=")
    toleration = Toleration(key=key, effect=effect, value=value if has_value else None)
    check_toleration(toleration)
    return toleration
