"""The Google Cloud Storage back end: the only module that talks to GCS.

Credentials come from Application Default Credentials (``storage.Client()``); when
``STORAGE_EMULATOR_HOST`` is set the client library itself switches to that endpoint
with anonymous credentials (see ``google.cloud.storage.client.Client.__init__``).

Retries: reads and unconditional writes use the library's ``DEFAULT_RETRY`` (429, 408,
5xx, connection resets, exponential backoff); writes with a generation precondition use
``DEFAULT_RETRY_IF_GENERATION_SPECIFIED`` so they are retried only because the
precondition makes a repeat harmless. Permanent errors (403, a missing bucket or object)
are turned into one-line ``SearchtuneError`` messages naming the object.

* **create-if-absent**: an upload with ``if_generation_match=0``. Because a retried
  request may find its own first attempt already stored, an existing object whose CRC32C
  equals that of the bytes being written counts as created.
* **compare-and-swap**: the generation is the object's ``generation`` number; the write
  carries ``if_generation_match``. Reads download exactly the generation they report.
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
from collections.abc import Iterator
from typing import BinaryIO

from searchtune.errors import SearchtuneError
from searchtune.io.backend import AccessDenied, Generation, Missing, PreconditionFailed

SCHEME = "gs://"
# Files above this size are uploaded resumably in chunks, so a dropped connection resends
# one chunk rather than the whole file. Chunk sizes must be multiples of 256 KiB.
RESUMABLE_THRESHOLD = 8 * 1024 * 1024
CHUNK_SIZE = 8 * 1024 * 1024
GLOB_CHARS = "*?["


def literal_prefix(pattern: str) -> str:
    """The part of a glob before its first wildcard (all of it when there is none)."""
    return pattern[:min((pattern.index(c) for c in GLOB_CHARS if c in pattern), default=len(pattern))]


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    rest = uri[len(SCHEME):]
    bucket, _, name = rest.partition("/")
    if not bucket:
        raise SearchtuneError(f"{uri}: not a valid gs:// URI (no bucket name)")
    return bucket, name


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (GCS messages can run to many lines)."""
    text = getattr(error, "message", None) or str(error)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(error).__name__


_client_lock = threading.Lock()
_clients: dict[tuple[str | None, int], object] = {}


def client():
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
                    f"Credentials ({type(error).__name__}: {first_line(error)}); run "
                    "'gcloud auth application-default login' or set GOOGLE_APPLICATION_CREDENTIALS"
                ) from None
        return _clients[key]


def _blob(uri: str):
    bucket, name = split_gcs(uri)
    if not name:
        raise SearchtuneError(f"{uri}: names a bucket, not an object")
    return client().bucket(bucket).blob(name)


def _bucket_exists(bucket: str) -> bool | None:
    from google.api_core import exceptions

    try:
        return client().bucket(bucket).exists()
    except exceptions.GoogleAPICallError:
        return None  # e.g. no storage.buckets.get permission: say nothing about it


@contextlib.contextmanager
def gcs_errors(uri: str) -> Iterator[None]:
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
            raise Missing(f"{uri}: bucket '{bucket}' does not exist") from None
        raise Missing(f"{uri}: no such object (404)") from None
    except exceptions.Forbidden as error:
        raise AccessDenied(
            f"{uri}: permission denied (403): {first_line(error)}; check the service "
            "account's roles on the bucket"
        ) from None
    except exceptions.Unauthorized as error:
        raise AccessDenied(f"{uri}: not authenticated (401): {first_line(error)}") from None
    except exceptions.RetryError as error:
        raise SearchtuneError(f"{uri}: gave up after retrying transient errors: {first_line(error.cause or error)}") from None
    except exceptions.GoogleAPICallError as error:
        raise SearchtuneError(f"{uri}: {error.code} {first_line(error)}") from None
    except DataCorruption:
        raise SearchtuneError(f"{uri}: checksum mismatch during transfer (data corrupted in transit)") from None
    except auth_exceptions.GoogleAuthError as error:
        raise SearchtuneError(f"{uri}: Google credentials problem: {first_line(error)}") from None


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


def _holds(uri: str, crc32c: str) -> bool:
    """True if the object exists and its CRC32C equals ``crc32c`` (our own earlier attempt)."""
    bucket, name = split_gcs(uri)
    with gcs_errors(uri):
        blob = client().bucket(bucket).get_blob(name, retry=_retry())
    return blob is not None and blob.crc32c == crc32c


def _upload_file(local_path: str, uri: str, **precondition) -> None:
    blob = _blob(uri)
    if os.path.getsize(local_path) > RESUMABLE_THRESHOLD:
        blob.chunk_size = CHUNK_SIZE  # resumable upload, one chunk resent on failure
    retry = _conditional_retry() if precondition else _retry()
    blob.upload_from_filename(local_path, checksum="auto", retry=retry, **precondition)


def _object_uris(bucket: str, blobs) -> dict[str, int]:
    return {f"{SCHEME}{bucket}/{b.name}": int(b.size or 0) for b in blobs if not b.name.endswith("/")}


class GcsBackend:
    """Objects below ``gs://bucket/prefix`` URIs (see the module docstring)."""

    def exists(self, uri: str) -> bool:
        with gcs_errors(uri):
            return _blob(uri).exists(retry=_retry())

    def stat(self, uri: str) -> tuple[int, str]:
        bucket, name = split_gcs(uri)
        with gcs_errors(uri):
            blob = client().bucket(bucket).get_blob(name, retry=_retry())
        if blob is None:
            raise Missing(f"{uri}: no such object (404)")
        return int(blob.size or 0), str(blob.generation)

    def read_bytes(self, uri: str) -> bytes:
        with gcs_errors(uri):
            return _blob(uri).download_as_bytes(checksum="auto", retry=_retry())

    def read_into(self, uri: str, sink: BinaryIO) -> None:
        # The library compares the object's CRC32C (sent in ``x-goog-hash``) with the bytes
        # received and raises DataCorruption on a mismatch.
        with gcs_errors(uri):
            _blob(uri).download_to_file(sink, checksum="auto", retry=_retry())

    def write_bytes(self, uri: str, data: bytes) -> None:
        with gcs_errors(uri):
            _blob(uri).upload_from_string(data, checksum="auto", retry=_retry())

    def upload(self, local_path: str, uri: str) -> None:
        with gcs_errors(uri):
            _upload_file(local_path, uri)

    def create_bytes(self, uri: str, data: bytes) -> None:
        try:
            with gcs_errors(uri):
                _blob(uri).upload_from_string(data, checksum="auto", if_generation_match=0, retry=_conditional_retry())
        except PreconditionFailed:
            if not _holds(uri, _crc32c_b64(data)):
                raise PreconditionFailed(f"{uri}: already exists") from None

    def create_file(self, local_path: str, uri: str) -> None:
        try:
            with gcs_errors(uri):
                _upload_file(local_path, uri, if_generation_match=0)
        except PreconditionFailed:
            if not _holds(uri, _file_crc32c_b64(local_path)):
                raise PreconditionFailed(f"{uri}: already exists") from None

    def read_with_generation(self, uri: str) -> tuple[bytes | None, Generation | None]:
        from google.api_core import exceptions

        bucket, name = split_gcs(uri)
        for _ in range(10):
            with gcs_errors(uri):
                blob = client().bucket(bucket).get_blob(name, retry=_retry())
            if blob is None:
                return None, None
            generation = blob.generation
            try:
                # Download exactly the generation we saw; if it was replaced meanwhile, look again.
                with gcs_errors(uri), contextlib.suppress(exceptions.NotFound):
                    return blob.download_as_bytes(if_generation_match=generation, retry=_retry()), generation
            except PreconditionFailed:
                continue
        raise SearchtuneError(f"{uri}: kept changing while being read")

    def write_if_generation_matches(self, uri: str, data: bytes, generation: Generation | None) -> None:
        with gcs_errors(uri):
            _blob(uri).upload_from_string(
                data, checksum="auto", if_generation_match=0 if generation is None else int(generation),
                retry=_conditional_retry(),
            )

    def delete(self, uri: str) -> None:
        from google.api_core import exceptions

        with gcs_errors(uri), contextlib.suppress(exceptions.NotFound):
            _blob(uri).delete(retry=_retry())

    def list_sizes(self, uri: str) -> dict[str, int]:
        bucket, name = split_gcs(uri)
        prefix = name.rstrip("/") + "/" if name else ""
        with gcs_errors(uri):
            return _object_uris(bucket, client().list_blobs(bucket, prefix=prefix, retry=_retry()))

    def glob(self, pattern: str) -> list[str]:
        bucket, name = split_gcs(pattern)
        with gcs_errors(pattern):
            blobs = client().list_blobs(bucket, prefix=literal_prefix(name), match_glob=name, retry=_retry())
            return sorted(_object_uris(bucket, blobs))

    def copy(self, src_uri: str, dst_uri: str) -> None:
        with gcs_errors(src_uri):
            source = _blob(src_uri)
            dst_bucket, dst_name = split_gcs(dst_uri)
            source.bucket.copy_blob(source, client().bucket(dst_bucket), dst_name, retry=_retry())
