"""Run the steps in their images: ``searchtune run --runner docker`` (kfp.local's DockerRunner).

kfp.local mounts only the pipeline root into a step's container. Everything else a run
names on this machine (the data, the catalog, a base model folder, the registry, the
checkpoint folder) is bind-mounted here at the same absolute path, so the pipeline's
arguments mean the same inside and out: inputs read-only, the registry and checkpoints
writable. A location a container could not see (missing, or a folder with links that
point outside it) is refused before any step starts: a registry the champion step cannot
see would otherwise read as "no production model yet", a gate without its non-regression
clause.

The containers run as the invoking user (uid:gid), so what they write is that user's, with
HOME in /tmp because the image's home belongs to its own user.
"""

import dataclasses
import glob
import os
from pathlib import Path

from searchtune.errors import SearchtuneError, first_line
from searchtune.io.gcs import literal_prefix
from searchtune.orchestration.cluster import ClusterSettings
from searchtune.params import RunParameters

# Parameters that may name a local path: (parameter, flag, read-only in the containers).
LOCAL_PATHS = (
    ("data", "--data", True),
    ("catalog", "--catalog", True),
    ("base_model", "--base-model", True),
    ("registry_root", "--registry", False),
    ("checkpoint_root", "--checkpoint-root", False),
)
CONTAINER_HOME = "/tmp"


@dataclasses.dataclass(frozen=True)
class BindMount:
    """One host folder or file, mounted at the same path in every step's container."""

    path: str
    read_only: bool


def is_local(value: str) -> bool:
    return bool(value) and "://" not in value


def mounts(parameters: RunParameters) -> list[BindMount]:
    """The bind mounts that let every step see the run's local paths (absolute, resolved).

    Raises:
        SearchtuneError: a path a container could not see, named with its flag.
    """
    found: dict[str, bool] = {}
    for name, flag, read_only in LOCAL_PATHS:
        value = getattr(parameters, name)
        if not is_local(value):
            continue
        if name == "base_model" and not (os.path.isabs(value) or value.startswith(".") or os.path.exists(value)):
            continue  # a Hugging Face model id, fetched by the step itself
        path = _mount_point(value, flag, must_exist=read_only)
        if read_only:
            _refuse_outside_links(path, flag)
        found[path] = found.get(path, True) and read_only
    return [BindMount(path, read_only) for path, read_only in sorted(found.items())]


def resolved_arguments(parameters: RunParameters) -> RunParameters:
    """The parameters with every local path absolute and its links resolved, as the containers see them."""
    update = {}
    for name, _, _ in LOCAL_PATHS:
        value = getattr(parameters, name)
        if is_local(value) and (name != "base_model" or os.path.exists(value)):
            update[name] = os.path.realpath(value)
    return parameters.model_copy(update=update)


def _mount_point(value: str, flag: str, must_exist: bool) -> str:
    """The folder or file to mount for ``value``: a glob's fixed part; a location to be created, its nearest parent."""
    path = os.path.realpath(value)
    fixed = literal_prefix(value)
    if fixed != value:  # a glob: the folder its matches are in
        path = os.path.realpath(fixed if os.path.isdir(fixed) else os.path.dirname(fixed.rstrip(os.sep)))
    if os.path.exists(path):
        return path
    if must_exist:
        raise SearchtuneError(f"{flag} {value}: no such file or folder on this machine")
    # A registry or checkpoint folder that the run will create: its nearest existing parent.
    parent = Path(path)
    while not parent.exists():
        parent = parent.parent
    if parent == Path(parent.anchor):
        raise SearchtuneError(f"{flag} {value}: none of its parent folders exists, so no container could create it; "
                              "create the folder first")
    return str(parent)


def _refuse_outside_links(path: str, flag: str) -> None:
    """A link inside a mounted folder whose target lies outside it is a dead link in the container."""
    if not os.path.isdir(path):
        return
    for entry in glob.iglob(os.path.join(glob.escape(path), "**"), recursive=True):
        if os.path.islink(entry):
            target = os.path.realpath(entry)
            if os.path.commonpath([target, path]) != path:
                raise SearchtuneError(f"{flag}: {entry} links to {target}, outside {path}, which the step containers "
                                      "cannot see; copy the file in or point the flag at the real location")


def check_engine_and_images(image_names: list[str]) -> None:
    """The Docker engine answers and every image is here (or can be pulled) and holds this code, before any step starts.

    The steps run the image's code with the component definitions of this checkout: an
    image built from other code fails, or worse, runs, in ways no message explains.

    Raises:
        SearchtuneError: no engine, an image that is neither here nor pullable, or one
            built from other searchtune code than this installation's.
    """
    import docker

    from searchtune.orchestration.images import source_digest

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        raise SearchtuneError(f"--runner docker: no Docker engine answers ({first_line(error)}); start one, "
                              "or run without --runner docker") from None
    here = source_digest()
    try:
        for name in dict.fromkeys(image_names):
            try:
                client.images.get(name)
            except docker.errors.ImageNotFound:
                try:
                    client.images.pull(name)
                except docker.errors.DockerException as error:
                    raise SearchtuneError(f"--runner docker: image {name} is not on this machine and could not be pulled "
                                          f"({first_line(error)}); build it with `make images`, or name yours with "
                                          "--image-prefix / --image-tag") from None
            theirs = _image_source_digest(client, name)
            if theirs != here:
                raise SearchtuneError(f"--runner docker: image {name} was built from other searchtune code than this "
                                      f"installation's (source digest {theirs or 'unknown'}, here {here}); "
                                      "rebuild it with `make images`")
    finally:
        client.close()


def _image_source_digest(client, name: str) -> str | None:
    """``images.source_digest()`` as computed inside the image (None: it cannot tell)."""
    import docker

    code = "from searchtune.orchestration.images import source_digest; print(source_digest())"
    try:
        output = client.containers.run(name, ["python", "-c", code], remove=True, user=f"{os.getuid()}:{os.getgid()}")
    except docker.errors.DockerException:
        return None
    return output.decode().strip() or None


def docker_runner(bind_mounts: list[BindMount], environment: dict[str, str], gpus: bool = False):
    """kfp.local's DockerRunner with the run's mounts, the invoking user and the steps' environment."""
    import docker
    from kfp import local

    run_args = {
        "mounts": [docker.types.Mount(target=m.path, source=m.path, type="bind", read_only=m.read_only) for m in bind_mounts],
        "user": f"{os.getuid()}:{os.getgid()}",
        "environment": {"HOME": CONTAINER_HOME, "HF_HOME": f"{CONTAINER_HOME}/huggingface", **environment},
    }
    if gpus:
        run_args["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return local.DockerRunner(**run_args)


def cluster_settings(image_prefix: str | None, image_tag: str | None, gpus: bool) -> ClusterSettings:
    """The settings of a containerized local run: no retries; fine-tuning in the GPU image only with --gpus."""
    return ClusterSettings(retries=0, cpu_retries=0, image_prefix=image_prefix, image_tag=image_tag,
                           finetune_on_cpu_image=not gpus)
