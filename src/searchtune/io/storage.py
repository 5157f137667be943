"""Read and write locations that are either local paths or ``gs://bucket/prefix`` URIs.

Every step goes through this module. It picks the back end by the location's scheme
(``searchtune.io.local`` for paths, ``searchtune.io.gcs`` for ``gs://``; both implement
``searchtune.io.backend.Backend``) and adds what works the same on both: URI arithmetic,
globs, copying trees across back ends and temporary local copies. The write rules (atomic
replace, create-if-absent, compare-and-swap on a generation token) are documented in the
two back-end modules.

Two primitives serve the model registry:

* **create-if-absent** (``create_bytes`` / ``create_file``): GCS ``if_generation_match=0``;
  locally ``os.link`` of a temporary file. An existing object holding exactly the same
  bytes counts as created (a retried request meeting its own first attempt).
* **compare-and-swap** (``read_with_generation`` / ``write_if_generation_matches``): the
  GCS generation number, or locally the SHA-256 of the bytes checked under ``flock``.
  Generations are opaque tokens to callers; ``None`` means "absent".
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from searchtune.errors import SearchtuneError
from searchtune.io import gcs, local
from searchtune.io.backend import AccessDenied, Backend, Generation, Missing, PreconditionFailed
from searchtune.io.gcs import CHUNK_SIZE, RESUMABLE_THRESHOLD, split_gcs

__all__ = [
    "CHUNK_SIZE", "GCS_SCHEME", "RESUMABLE_THRESHOLD", "AccessDenied", "Generation", "Missing", "PreconditionFailed",
    "backend_for",
    "copy_tree", "create_bytes", "create_file", "delete", "download", "exists", "expand", "is_gcs", "join",
    "list_prefix", "list_sizes", "local_copy", "read_bytes", "read_into", "read_with_generation", "relative",
    "split_gcs", "stat", "upload", "write_bytes", "write_if_generation_matches",
]

log = logging.getLogger(__name__)

GCS_SCHEME = gcs.SCHEME
_LOCAL = local.LocalBackend()
_GCS = gcs.GcsBackend()


# --------------------------------------------------------------------------- URIs


def is_gcs(uri: str) -> bool:
    """True for ``gs://`` URIs, False for local paths."""
    return str(uri).startswith(GCS_SCHEME)


def backend_for(uri: str) -> Backend:
    """The back end that stores ``uri``."""
    return _GCS if is_gcs(uri) else _LOCAL


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or a ``gs://`` URI."""
    uri = str(uri)
    if not is_gcs(uri):
        return os.path.join(uri, *parts)
    pieces = [uri.rstrip("/")] + [str(p).strip("/") for p in parts if str(p).strip("/")]
    return "/".join(pieces)


def relative(uri: str, root: str) -> str:
    """Path of ``uri`` below ``root`` with ``/`` separators."""
    if is_gcs(uri):
        return uri[len(root.rstrip("/")) + 1:]
    return os.path.relpath(uri, root).replace(os.sep, "/")


# --------------------------------------------------------------------------- one object


def exists(uri: str) -> bool:
    """True if ``uri`` names an existing file (local) or object (GCS)."""
    return backend_for(uri).exists(uri)


def stat(uri: str) -> tuple[int, str]:
    """(size in bytes, version) of a file or object; the version changes whenever the content can have.

    The version is the GCS generation, or the local file's modification time in nanoseconds.

    Raises:
        SearchtuneError: the file or object does not exist (``Missing``) or cannot be read.
    """
    return backend_for(uri).stat(uri)


def read_bytes(uri: str) -> bytes:
    """The whole content of a file or object."""
    return backend_for(uri).read_bytes(uri)


def read_into(uri: str, sink: BinaryIO) -> None:
    """Stream a file's or object's content into ``sink`` (anything with ``write(bytes)``)."""
    backend_for(uri).read_into(uri, sink)


def write_bytes(uri: str, data: bytes) -> None:
    """Write (replace) a file or object; on local disk atomically via temp file + os.replace."""
    backend_for(uri).write_bytes(uri, data)


def download(uri: str, local_path: str) -> str:
    """Copy one file/object to ``local_path`` (written to a temp name, then renamed).

    On GCS the library compares the object's CRC32C (sent by the server in
    ``x-goog-hash``) with the bytes received and raises on a mismatch.
    """
    temp = local.temp_path(local_path)
    try:
        with local.os_errors(local_path):
            local.make_parent(local_path)
            handle = open(temp, "wb")
        with handle:
            read_into(uri, handle)
        os.replace(temp, local_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return local_path


def upload(local_path: str, uri: str) -> str:
    """Copy a local file to ``uri`` (GCS object or local path), replacing what is there."""
    if not os.path.isfile(local_path):
        raise local.missing(local_path)
    backend_for(uri).upload(local_path, uri)
    return uri


def delete(uri: str) -> None:
    """Remove a file/object; a missing one is not an error."""
    backend_for(uri).delete(uri)


def create_bytes(uri: str, data: bytes) -> None:
    """Create ``uri`` with ``data`` only if nothing is there yet.

    Raises:
        PreconditionFailed: something (with other content) already exists at ``uri``.
    """
    backend_for(uri).create_bytes(uri, data)


def create_file(local_path: str, uri: str) -> None:
    """Upload/copy a local file to ``uri`` only if nothing is there yet (see ``create_bytes``)."""
    if not os.path.isfile(local_path):
        raise local.missing(local_path)
    backend_for(uri).create_file(local_path, uri)


def read_with_generation(uri: str) -> tuple[bytes | None, Generation | None]:
    """The object's bytes and generation token, or ``(None, None)`` if it does not exist."""
    return backend_for(uri).read_with_generation(uri)


def write_if_generation_matches(uri: str, data: bytes, generation: Generation | None) -> None:
    """Compare-and-swap: replace ``uri`` with ``data`` only if it is still at ``generation``.

    Args:
        uri: the object.
        data: the new content.
        generation: the token ``read_with_generation`` returned; None means the object
            must not exist yet.

    Raises:
        PreconditionFailed: the object changed (or appeared) since it was read.
    """
    backend_for(uri).write_if_generation_matches(uri, data, generation)


# --------------------------------------------------------------------------- many objects


def list_sizes(uri: str) -> dict[str, int]:
    """Every file/object below the folder/prefix ``uri`` with its size; empty if there is none."""
    return backend_for(uri).list_sizes(uri)


def list_prefix(uri: str) -> list[str]:
    """Every file/object below the folder/prefix ``uri``, sorted; empty if there is none."""
    return sorted(list_sizes(uri))


def expand(uri_or_glob: str) -> list[str]:
    """The files a location names: a file, every file below a folder, or a glob's matches.

    Args:
        uri_or_glob: a local path or ``gs://`` URI; ``*`` and ``?`` match within one path
            segment, ``**`` across segments (GCS ``matchGlob`` syntax on gs://, Python's
            recursive glob locally).

    Returns:
        Sorted file paths / ``gs://`` URIs.

    Raises:
        SearchtuneError: nothing matched; the message names the location.
    """
    location = str(uri_or_glob)
    name = split_gcs(location)[1] if is_gcs(location) else location
    if any(c in name for c in gcs.GLOB_CHARS):
        found = backend_for(location).glob(location)
    elif (name or not is_gcs(location)) and exists(location):
        found = [location]
    else:
        found = list_prefix(location)
    if not found:
        raise SearchtuneError(f"{location}: no files found")
    log.debug("%s: %d file(s)", location, len(found))
    return found


def copy_tree(src_uri: str, dst_uri: str) -> list[str]:
    """Copy every file below ``src_uri`` to the same relative path below ``dst_uri``.

    Either side may be local or ``gs://``. Returns the destination URIs.
    """
    written = []
    for source in expand(src_uri):
        target = join(dst_uri, relative(source, src_uri))
        if is_gcs(source) == is_gcs(target):
            backend_for(source).copy(source, target)
        elif is_gcs(source):
            download(source, target)
        else:
            upload(source, target)
        written.append(target)
    log.info("copied %d file(s) from %s to %s", len(written), src_uri, dst_uri)
    return written


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path holding ``uri``'s content, for code that needs real files.

    Local paths are yielded as they are. A ``gs://`` object is downloaded into a
    temporary folder (yielding the file's path); a ``gs://`` prefix is downloaded with
    its layout (yielding the folder). The temporary copy is removed afterwards.
    """
    if not is_gcs(uri):
        if not os.path.exists(uri):
            raise local.missing(uri)
        yield uri
        return
    with tempfile.TemporaryDirectory(prefix="searchtune-") as temp:
        if split_gcs(uri)[1] and exists(uri):
            yield download(uri, os.path.join(temp, uri.rstrip("/").rsplit("/", 1)[-1]))
            return
        files = list_prefix(uri)
        if not files:
            raise SearchtuneError(f"{uri}: no such object or prefix")
        for source in files:
            download(source, os.path.join(temp, relative(source, uri)))
        yield temp
