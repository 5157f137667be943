"""The container images the components run in: named in this one place.

``searchtune compile --image-prefix REGISTRY/PATH --image-tag TAG`` overrides them per
task at compile time (see ``searchtune.cluster``); these are the defaults baked into the
component definitions. Locally, kfp.local's SubprocessRunner ignores the image and runs
the component in this Python environment.
"""

import os

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
