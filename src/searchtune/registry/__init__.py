"""The model registry: versioned models with a movable ``production`` alias, on local disk or GCS."""

from searchtune.registry.model_registry import (
    DEFAULT_MODEL_NAME,
    DEFAULT_REGISTRY,
    PRODUCTION,
    AliasConflict,
    ModelRegistry,
    default_actor,
)

__all__ = ["DEFAULT_MODEL_NAME", "DEFAULT_REGISTRY", "PRODUCTION", "AliasConflict", "ModelRegistry", "default_actor"]
