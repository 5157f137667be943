"""References to a registered model as users type them: ``<registry>/<model>@<version or alias>``."""

from __future__ import annotations

from searchtune.errors import SearchtuneError
from searchtune.registry.layout import DEFAULT_MODEL_NAME, PRODUCTION
from searchtune.registry.model_registry import ModelRegistry


def parse_ref(ref: str, registry: str, default_version: str | None = PRODUCTION) -> tuple[ModelRegistry, str, str | None]:
    """Split ``<registry>/<model>@<version>`` into (registry, model, version).

    Args:
        ref: the reference; without a ``/`` it is a model name inside ``registry``.
        registry: the registry root used when ``ref`` names none.
        default_version: the version when ``ref`` has no ``@`` part.
    """
    location, at, version = ref.rpartition("@") if "@" in ref else (ref, "", "")
    version = version.strip() or (None if at else default_version)
    if at and version is None:
        raise SearchtuneError(f"'{ref}': nothing after '@' (use @3, @production or @latest)")
    location = location.rstrip("/")
    if location.startswith("gs://") and location.count("/") < 3:
        raise SearchtuneError(f"'{ref}': expected gs://bucket/registry/<model>")
    root, slash, model = location.rpartition("/")
    if not slash:
        root, model = registry, location or DEFAULT_MODEL_NAME  # "@3" alone: the default model
    if not model:
        raise SearchtuneError(f"'{ref}': no model name (expected <registry>/<model>@<version>)")
    return ModelRegistry(root or "/"), model, version
