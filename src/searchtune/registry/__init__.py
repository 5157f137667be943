"""The model registry: versioned models with a movable ``production`` alias, on local disk or GCS.

``ModelRegistry`` (``model_registry``) is the entry point; ``layout``, ``versions``,
``aliases``, ``candidates``, ``verify``, ``probe`` and ``refs`` (``<registry>/<model>@<version>``) hold the parts and their guarantees.
"""

from searchtune.registry.layout import (
    DEFAULT_MODEL_NAME,
    DEFAULT_REGISTRY,
    PRODUCTION,
    AliasConflict,
    default_actor,
)
from searchtune.registry.model_registry import ModelRegistry
from searchtune.registry.refs import parse_ref

__all__ = ["DEFAULT_MODEL_NAME", "DEFAULT_REGISTRY", "PRODUCTION", "AliasConflict", "ModelRegistry", "default_actor", "parse_ref"]
