"""The container images the components run in: named in this one place.

``searchtune compile --image-prefix REGISTRY/PATH --image-tag TAG`` overrides them per
task at compile time (see ``searchtune.orchestration.cluster``); these are the defaults baked into the
component definitions. Locally, kfp.local's SubprocessRunner ignores the image and runs
the component in this Python environment.
"""

import hashlib
import importlib.util
import os
from pathlib import Path

from searchtune import __version__

IMAGE_PREFIX = os.environ.get("SEARCHTUNE_IMAGE_PREFIX", "ghcr.io/searchtune")
IMAGE_TAG = os.environ.get("SEARCHTUNE_IMAGE_TAG", __version__)

CPU_IMAGE_NAME = "searchtune-cpu"
GPU_IMAGE_NAME = "searchtune-gpu"


def image(name: str, prefix: str = IMAGE_PREFIX, tag: str = IMAGE_TAG) -> str:
    """Full reference of one of the project's images, e.g. ``ghcr.io/searchtune/searchtune-cpu:0.1.0``."""
    return f"{prefix.rstrip('/')}/{name}:{tag}"


CPU_IMAGE = image(CPU_IMAGE_NAME)
GPU_IMAGE = image(GPU_IMAGE_NAME)


# The packages whose code runs inside the images: the step logic, the components, the pipeline.
CODE_PACKAGES = ("searchtune", "searchtune.components", "searchtune.pipelines")


def source_digest(locations: dict[str, list[Path]] | None = None) -> str:
    """A digest of this installation's searchtune code: every module's path in its package and its bytes.

    The same in an editable checkout (components and pipelines beside ``src/searchtune``) and
    in an image built from it (inside ``searchtune/``), so a containerized run can tell an
    image built from other code before any step runs.

    Args:
        locations: package -> its folders; None = where ``CODE_PACKAGES`` are installed here.
    """
    if locations is None:
        locations = {package: [Path(f) for f in importlib.util.find_spec(package).submodule_search_locations]
                     for package in CODE_PACKAGES}
    files: dict[str, Path] = {}
    for package, folders in locations.items():
        for folder in folders:
            # Installed, the components and the pipeline sit inside searchtune/: they are counted as themselves.
            nested = [f for name, fs in locations.items() if name != package for f in fs if folder in f.parents]
            for path in folder.rglob("*.py"):
                if "__pycache__" not in path.parts and not any(n in path.parents for n in nested):
                    files[f"{package}/{path.relative_to(folder).as_posix()}"] = path
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    return digest.hexdigest()[:16]
