"""Read and write locations that are either local paths or ``gs://bucket/prefix`` URIs.

This is the only module that talks to Google Cloud Storage; every step goes through it.
Credentials come from Application Default Credentials (``storage.Client()``); when
``STORAGE_EMULATOR_HOST`` is set the client library itself switches to that endpoint
with anonymous credentials (see ``google.cloud.storage.client.Client.__init__``).

Retries: reads and unconditional writes use the library's ``DEFAULT_RETRY`` (429, 408,
5xx, connection resets, exponential backoff); writes with a generation precondition use
``DEFAULT_RETRY_IF_GENERATION_SPECIFIED`` so they are retried only because the
precondition makes a repeat harmless. Permanent errors (403, a missing bucket or object)
are turned into one-line ``SearchtuneError`` messages naming the object.

Two primitives serve the model registry:

* **create-if-absent** (``create_bytes`` / ``create_file``): on GCS an upload with
  ``if_generation_match=0``; on local disk the data is written to a temporary file that is
  then ``os.link``-ed to the final name, which fails if the name exists. Because a retried
  GCS request may find its own first attempt already stored, an existing object that holds
  exactly the same bytes counts as created.
* **compare-and-swap** (``read_with_generation`` / ``write_if_generation_matches``): on GCS
  the generation is the object's ``generation`` number and the write carries
  ``if_generation_match``. On local disk the "generation" is the SHA-256 of the file's
  bytes: a writer takes an exclusive ``flock`` on the object's directory, re-hashes the
  current file, and replaces it (temp file + ``os.replace``) only if the hash is the one
  the caller read. Readers need no lock because ``os.replace`` is atomic. Using the content
  as the generation means there is no second file that a crash could leave out of step,
  and no lock files are left behind; an A-B-A change back to identical bytes passes the
  check, which is harmless because the caller's premise (the object holds what it read)
  is then true. Generations are opaque tokens to callers; ``None`` means "absent".
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import glob as _glob
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator

from searchtune.errors import SearchtuneError

log = logging.getLogger(__name__)

GCS_SCHEME = "gs://"
# Files above this size are uploaded resumably in chunks, so a dropped connection resends
# one chunk rather than the whole file. Chunk sizes must be multiples of 256 KiB.
RESUMABLE_THRESHOLD = 8 * 1024 * 1024
CHUNK_SIZE = 8 * 1024 * 1024
_GLOB_CHARS = "*?["
_TMP_SUFFIX = ".searchtune-tmp"

Generation = int | str


class PreconditionFailed(SearchtuneError):
    """A create-if-absent or compare-and-swap write found the object changed."""


# --------------------------------------------------------------------------- URIs


def is_gcs(uri: str) -> bool:
    """True for ``gs://`` URIs, False for local paths."""
    return str(uri).startswith(GCS_SCHEME)


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or a ``gs://`` URI."""
    uri = str(uri)
    if not is_gcs(uri):
        return os.path.join(uri, *parts)
    pieces = [uri.rstrip("/")] + [str(p).strip("/") for p in parts if str(p).strip("/")]
    return "/".join(pieces)


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    rest = uri[len(GCS_SCHEME):]
    bucket, _, name = rest.partition("/")
    if not bucket:
        raise SearchtuneError(f"{uri}: not a valid gs:// URI (no bucket name)")
    return bucket, name


def relative(uri: str, root: str) -> str:
    """Path of ``uri`` below ``root`` with ``/`` separators."""
    if is_gcs(uri):
        return uri[len(root.rstrip("/")) + 1:]
    return os.path.relpath(uri, root).replace(os.sep, "/")


# --------------------------------------------------------------------------- GCS plumbing

_client_lock = threading.Lock()
_clients: dict[tuple[str | None, int], object] = {}


def _client():
    """One client per process (and per emulator endpoint, which tests switch)."""
    from google.auth import exceptions as auth_exceptions
    from google.cloud import storage

    key = (os.environ.get("STORAGE_EMULATOR_HOST"), os.getpid())
    with _client_lock:
        if key not in _clients:
            try:
                _clients[key] = storage.Client()
            except (auth_exceptions.GoogleAuthError, OSError, ValueError) as error:
                raise SearchtuneError(
                    "cannot create a Google Cloud Storage client from Application Default "
                    f"Credentials ({type(error).__name__}: {_first_line(error)}); run "
                    "'gcloud auth application-default login' or set GOOGLE_APPLICATION_CREDENTIALS"
                ) from None
        return _clients[key]


def _blob(uri: str):
    bucket, name = split_gcs(uri)
    if not name:
        raise SearchtuneError(f"{uri}: names a bucket, not an object")
    return _client().bucket(bucket).blob(name)


def _first_line(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(error).__name__


def _bucket_exists(bucket: str) -> bool | None:
    from google.api_core import exceptions

    try:
        return _client().bucket(bucket).exists()
    except exceptions.GoogleAPICallError:
        return None  # e.g. no storage.buckets.get permission: say nothing about it


@contextlib.contextmanager
def _gcs_errors(uri: str) -> Iterator[None]:
    """Turn the library's exceptions into one-line SearchtuneErrors naming ``uri``."""
    from google.api_core import exceptions
    from google.auth import exceptions as auth_exceptions
    from google.cloud.storage.exceptions import DataCorruption

    try:
        yield
    except exceptions.PreconditionFailed:
        raise PreconditionFailed(f"{uri}: changed by someone else (generation precondition failed)") from None
    except exceptions.NotFound:
        bucket = split_gcs(uri)[0]
        if _bucket_exists(bucket) is False:
            raise SearchtuneError(f"{uri}: bucket '{bucket}' does not exist") from None
        raise SearchtuneError(f"{uri}: no such object (404)") from None
    except exceptions.Forbidden as error:
        raise SearchtuneError(
            f"{uri}: permission denied (403): {_first_line(error)}; check the service "
            "account's roles on the bucket"
        ) from None
    except exceptions.Unauthorized as error:
        raise SearchtuneError(f"{uri}: not authenticated (401): {_first_line(error)}") from None
    except exceptions.RetryError as error:
        raise SearchtuneError(f"{uri}: gave up after retrying transient errors: {_first_line(error.cause or error)}") from None
    except exceptions.GoogleAPICallError as error:
        raise SearchtuneError(f"{uri}: {error.code} {_first_line(error)}") from None
    except DataCorruption:
        raise SearchtuneError(f"{uri}: checksum mismatch during transfer (data corrupted in transit)") from None
    except auth_exceptions.GoogleAuthError as error:
        raise SearchtuneError(f"{uri}: Google credentials problem: {_first_line(error)}") from None


def _retry():
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY


def _conditional_retry():
    from google.cloud.storage.retry import DEFAULT_RETRY_IF_GENERATION_SPECIFIED

    return DEFAULT_RETRY_IF_GENERATION_SPECIFIED


def _crc32c_b64(data: bytes) -> str:
    import google_crc32c

    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode("ascii")


def _file_crc32c_b64(path: str) -> str:
    import google_crc32c

    checksum = google_crc32c.Checksum()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            checksum.update(block)
    return base64.b64encode(checksum.digest()).decode("ascii")


def _gcs_holds(uri: str, crc32c: str) -> bool:
    """True if the object exists and its CRC32C equals ``crc32c`` (our own earlier attempt)."""
    bucket, name = split_gcs(uri)
    with _gcs_errors(uri):
        blob = _client().bucket(bucket).get_blob(name, retry=_retry())
    return blob is not None and blob.crc32c == crc32c


# --------------------------------------------------------------------------- local plumbing


def _temp_path(path: str) -> str:
    """A hidden temporary name next to ``path``, so rename/link stay on one file system."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}")


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(_TMP_SUFFIX)


def _write_temp(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temp = _temp_path(path)
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return temp


def _local_missing(path: str) -> SearchtuneError:
    return SearchtuneError(f"{path}: no such file or directory")


@contextlib.contextmanager
def _local_io(path: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise _local_missing(path) from None
    except PermissionError:
        raise SearchtuneError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise SearchtuneError(f"{path}: is a directory, expected a file") from None


@contextlib.contextmanager
def _dir_lock(path: str) -> Iterator[None]:
    """Exclusive flock on the directory holding ``path``: serialises local CAS writers."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _local_generation(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- plain reads and writes


def exists(uri: str) -> bool:
    """True if ``uri`` names an existing file (local) or object (GCS)."""
    if not is_gcs(uri):
        return os.path.isfile(uri)
    with _gcs_errors(uri):
        return _blob(uri).exists(retry=_retry())


def read_bytes(uri: str) -> bytes:
    """The whole content of a file or object."""
    if not is_gcs(uri):
        with _local_io(uri), open(uri, "rb") as handle:
            return handle.read()
    with _gcs_errors(uri):
        return _blob(uri).download_as_bytes(checksum="auto", retry=_retry())


def write_bytes(uri: str, data: bytes) -> None:
    """Write (replace) a file or object; on local disk atomically via temp file + os.replace."""
    if not is_gcs(uri):
        with _local_io(uri):
            os.replace(_write_temp(uri, data), uri)
        return
    with _gcs_errors(uri):
        _blob(uri).upload_from_string(data, checksum="auto", retry=_retry())


def download(uri: str, local_path: str) -> str:
    """Copy one file/object to ``local_path`` (written to a temp name, then renamed).

    On GCS the library compares the object's CRC32C (sent by the server in
    ``x-goog-hash``) with the bytes received and raises on a mismatch.
    """
    os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
    temp = _temp_path(local_path)
    try:
        if is_gcs(uri):
            with _gcs_errors(uri):
                _blob(uri).download_to_filename(temp, checksum="auto", retry=_retry())
        else:
            with _local_io(uri):
                shutil.copyfile(uri, temp)
        os.replace(temp, local_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return local_path


def _upload_blob(local_path: str, uri: str, **precondition):
    blob = _blob(uri)
    if os.path.getsize(local_path) > RESUMABLE_THRESHOLD:
        blob.chunk_size = CHUNK_SIZE  # resumable upload, one chunk resent on failure
    retry = _conditional_retry() if precondition else _retry()
    blob.upload_from_filename(local_path, checksum="auto", retry=retry, **precondition)


def upload(local_path: str, uri: str) -> str:
    """Copy a local file to ``uri`` (GCS object or local path), replacing what is there."""
    if not os.path.isfile(local_path):
        raise _local_missing(local_path)
    if not is_gcs(uri):
        with _local_io(uri):
            os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
            temp = _temp_path(uri)
            shutil.copyfile(local_path, temp)
            os.replace(temp, uri)
        return uri
    with _gcs_errors(uri):
        _upload_blob(local_path, uri)
    return uri


def delete(uri: str) -> None:
    """Remove a file/object; a missing one is not an error."""
    if not is_gcs(uri):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(uri)
        return
    from google.api_core import exceptions

    with _gcs_errors(uri), contextlib.suppress(exceptions.NotFound):
        _blob(uri).delete(retry=_retry())


# --------------------------------------------------------------------------- listing


def list_prefix(uri: str) -> list[str]:
    """Every file/object below the folder/prefix ``uri``, sorted; empty if there is none."""
    if not is_gcs(uri):
        if not os.path.isdir(uri):
            return []
        found = []
        for directory, dirs, files in os.walk(uri):
            dirs.sort()
            found.extend(os.path.join(directory, f) for f in files if not _is_temp(f))
        return sorted(found)
    bucket, name = split_gcs(uri)
    prefix = name.rstrip("/") + "/" if name else ""
    with _gcs_errors(uri):
        blobs = _client().list_blobs(bucket, prefix=prefix, retry=_retry())
        return sorted(f"{GCS_SCHEME}{bucket}/{b.name}" for b in blobs if not b.name.endswith("/"))


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
    if is_gcs(location):
        found = _expand_gcs(location)
    elif any(c in location for c in _GLOB_CHARS):
        found = sorted(p for p in _glob.glob(location, recursive=True) if os.path.isfile(p))
    elif os.path.isfile(location):
        found = [location]
    else:
        found = list_prefix(location)
    if not found:
        raise SearchtuneError(f"{location}: no files found")
    log.debug("%s: %d file(s)", location, len(found))
    return found


def _expand_gcs(location: str) -> list[str]:
    bucket, name = split_gcs(location)
    if any(c in name for c in _GLOB_CHARS):
        first = min(name.index(c) for c in _GLOB_CHARS if c in name)
        with _gcs_errors(location):
            blobs = _client().list_blobs(bucket, prefix=name[:first], match_glob=name, retry=_retry())
            return sorted(f"{GCS_SCHEME}{bucket}/{b.name}" for b in blobs if not b.name.endswith("/"))
    if name and exists(location):
        return [location]
    return list_prefix(location)


# --------------------------------------------------------------------------- trees


def copy_tree(src_uri: str, dst_uri: str) -> list[str]:
    """Copy every file below ``src_uri`` to the same relative path below ``dst_uri``.

    Either side may be local or ``gs://``. Returns the destination URIs.
    """
    written = []
    for source in expand(src_uri):
        target = join(dst_uri, relative(source, src_uri))
        if is_gcs(source) and is_gcs(target):
            with _gcs_errors(source):
                src_blob = _blob(source)
                dst_bucket, dst_name = split_gcs(target)
                src_blob.bucket.copy_blob(src_blob, _client().bucket(dst_bucket), dst_name, retry=_retry())
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
            raise _local_missing(uri)
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


# --------------------------------------------------------------------------- registry primitives


def create_bytes(uri: str, data: bytes) -> None:
    """Create ``uri`` with ``data`` only if nothing is there yet.

    Raises:
        PreconditionFailed: something (with other content) already exists at ``uri``.
    """
    if not is_gcs(uri):
        temp = _write_temp(uri, data)
        try:
            os.link(temp, uri)
        except FileExistsError:
            if _read_local_or_none(uri) != data:
                raise PreconditionFailed(f"{uri}: already exists") from None
        finally:
            os.unlink(temp)
        return
    try:
        with _gcs_errors(uri):
            _blob(uri).upload_from_string(data, checksum="auto", if_generation_match=0, retry=_conditional_retry())
    except PreconditionFailed:
        if not _gcs_holds(uri, _crc32c_b64(data)):
            raise PreconditionFailed(f"{uri}: already exists") from None


def create_file(local_path: str, uri: str) -> None:
    """Upload/copy a local file to ``uri`` only if nothing is there yet (see ``create_bytes``)."""
    if not os.path.isfile(local_path):
        raise _local_missing(local_path)
    if not is_gcs(uri):
        os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
        temp = _temp_path(uri)
        try:
            shutil.copyfile(local_path, temp)
            os.link(temp, uri)
        except FileExistsError:
            raise PreconditionFailed(f"{uri}: already exists") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        return
    try:
        with _gcs_errors(uri):
            _upload_blob(local_path, uri, if_generation_match=0)
    except PreconditionFailed:
        if not _gcs_holds(uri, _file_crc32c_b64(local_path)):
            raise PreconditionFailed(f"{uri}: already exists") from None


def _read_local_or_none(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def read_with_generation(uri: str) -> tuple[bytes | None, Generation | None]:
    """The object's bytes and generation token, or ``(None, None)`` if it does not exist."""
    if not is_gcs(uri):
        with _local_io(uri):
            data = _read_local_or_none(uri)
        return (None, None) if data is None else (data, _local_generation(data))
    from google.api_core import exceptions

    bucket, name = split_gcs(uri)
    for _ in range(10):
        with _gcs_errors(uri):
            blob = _client().bucket(bucket).get_blob(name, retry=_retry())
        if blob is None:
            return None, None
        generation = blob.generation
        try:
            # Download exactly the generation we saw; if it was replaced meanwhile, look again.
            with _gcs_errors(uri), contextlib.suppress(exceptions.NotFound):
                return blob.download_as_bytes(if_generation_match=generation, retry=_retry()), generation
        except PreconditionFailed:
            continue
    raise SearchtuneError(f"{uri}: kept changing while being read")


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
    if not is_gcs(uri):
        with _local_io(uri), _dir_lock(uri):
            current = _read_local_or_none(uri)
            current_generation = None if current is None else _local_generation(current)
            if current_generation != generation:
                raise PreconditionFailed(f"{uri}: changed by someone else since it was read")
            temp = _write_temp(uri, data)
            if generation is None:
                try:
                    os.link(temp, uri)  # belt and braces: never replaces, even without the lock
                except FileExistsError:
                    raise PreconditionFailed(f"{uri}: appeared while being created") from None
                finally:
                    os.unlink(temp)
            else:
                os.replace(temp, uri)
        return
    with _gcs_errors(uri):
        _blob(uri).upload_from_string(
            data, checksum="auto", if_generation_match=0 if generation is None else int(generation),
            retry=_conditional_retry(),
        )
