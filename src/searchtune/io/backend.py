"""The one interface every storage back end implements (local disk, Google Cloud Storage).

``searchtune.io.storage`` picks a back end by the location's scheme and calls it; nothing
else in searchtune talks to a back end directly. Locations are strings: local paths for
``LocalBackend``, ``gs://bucket/name`` URIs for ``GcsBackend``. Every method raises
``SearchtuneError`` with a one-line message naming the location for permanent failures
(``Missing`` for a missing object or bucket, ``AccessDenied`` for a permission error or a
read-only disk, plain ``SearchtuneError`` otherwise), and ``PreconditionFailed`` when a
create-if-absent or compare-and-swap write finds the object changed.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol

from searchtune.errors import SearchtuneError

# An opaque token naming one state of an object: GCS's generation number, or the SHA-256
# of a local file's bytes. Callers only pass it back; ``None`` means "absent".
Generation = int | str


class PreconditionFailed(SearchtuneError):
    """A create-if-absent or compare-and-swap write found the object changed."""


class AccessDenied(SearchtuneError):
    """The caller may not do this here: GCS 403/401, a local permission error or read-only disk."""


class Missing(SearchtuneError):
    """The file, object or GCS bucket does not exist."""


class Backend(Protocol):
    """What ``storage`` needs from a back end; the two implementations are ``local`` and ``gcs``."""

    def exists(self, uri: str) -> bool:
        """True if ``uri`` names an existing file/object."""

    def stat(self, uri: str) -> tuple[int, str]:
        """(size in bytes, version): the GCS generation, or a local file's mtime in nanoseconds."""

    def read_bytes(self, uri: str) -> bytes:
        """The whole content of a file/object."""

    def read_into(self, uri: str, sink: BinaryIO) -> None:
        """Stream the content of a file/object into ``sink`` (anything with ``write``)."""

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write (replace) a file/object; readers see the old or the new bytes, never a mix."""

    def upload(self, local_path: str, uri: str) -> None:
        """Copy the local file ``local_path`` to ``uri``, replacing what is there."""

    def create_bytes(self, uri: str, data: bytes) -> None:
        """Create ``uri`` only if absent; an existing object with exactly ``data`` counts as created.

        Raises:
            PreconditionFailed: something with other content is already there.
        """

    def create_file(self, local_path: str, uri: str) -> None:
        """Like ``create_bytes`` with the content of the local file ``local_path``."""

    def read_with_generation(self, uri: str) -> tuple[bytes | None, Generation | None]:
        """The bytes and generation token, or ``(None, None)`` if absent."""

    def write_if_generation_matches(self, uri: str, data: bytes, generation: Generation | None) -> None:
        """Replace ``uri`` only if it is still at ``generation`` (None: only if absent).

        Raises:
            PreconditionFailed: the object changed (or appeared) since it was read.
        """

    def delete(self, uri: str) -> None:
        """Remove a file/object; a missing one is not an error."""

    def list_sizes(self, uri: str) -> dict[str, int]:
        """Every file/object below the folder/prefix ``uri`` with its size in bytes."""

    def glob(self, pattern: str) -> list[str]:
        """Files/objects matching ``pattern`` (``*``/``?`` within a segment, ``**`` across), sorted."""

    def copy(self, src_uri: str, dst_uri: str) -> None:
        """Copy one file/object to another location of the same back end."""
