"""The local-disk storage back end.

* Every write goes to a hidden temporary file next to the target (same file system), is
  fsync-ed, then renamed into place with ``os.replace``, so readers see the old or the new
  content and never a partial file.
* **create-if-absent**: the temporary file is ``os.link``-ed to the final name, which
  fails if the name exists. An existing file holding exactly the same bytes counts as
  created (the same rule as on GCS, where a retried request can meet its own first try).
* **compare-and-swap**: the "generation" is the SHA-256 of the file's bytes. A writer
  takes an exclusive ``flock`` on the object's directory, re-hashes the current file, and
  replaces it only if the hash is the one the caller read. Readers need no lock because
  ``os.replace`` is atomic. Using the content as the generation means there is no second
  file that a crash could leave out of step, and no lock files are left behind; an A-B-A
  change back to identical bytes passes the check, which is harmless because the caller's
  premise (the object holds what it read) is then true.

OS errors become one-line ``SearchtuneError`` messages naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import filecmp
import glob as _glob
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from searchtune.errors import SearchtuneError
from searchtune.io.backend import AccessDenied, Generation, Missing, PreconditionFailed

TMP_SUFFIX = ".searchtune-tmp"
_BLOCK = 1 << 20


def temp_path(path: str) -> str:
    """A hidden temporary name next to ``path``, so rename/link stay on one file system."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def is_temp(name: str) -> bool:
    """True for the names ``temp_path`` makes (listing skips them)."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def missing(path: str) -> SearchtuneError:
    """The error for a path that does not exist."""
    return Missing(f"{path}: no such file or directory")


def _culprit(error: OSError, path: str) -> str:
    """The path the OS names in ``error`` (e.g. the folder that is read-only), else ``path``."""
    name = error.filename
    return path if not name or is_temp(os.path.basename(str(name))) else str(name)


@contextlib.contextmanager
def os_errors(path: str) -> Iterator[None]:
    """Turn OS errors into one-line SearchtuneErrors naming ``path`` (or the folder at fault)."""
    try:
        yield
    except FileNotFoundError:
        raise missing(path) from None
    except PermissionError as error:
        raise AccessDenied(f"{_culprit(error, path)}: permission denied") from None
    except IsADirectoryError:
        raise SearchtuneError(f"{path}: is a directory, expected a file") from None
    except NotADirectoryError as error:
        raise SearchtuneError(f"{_culprit(error, path)}: a folder on this path is a file") from None
    except FileExistsError as error:  # makedirs meeting a file where a folder belongs
        raise SearchtuneError(f"{_culprit(error, path)}: exists and is not a folder") from None
    except OSError as error:
        if error.errno == errno.EROFS:
            raise AccessDenied(f"{_culprit(error, path)}: read-only file system") from None
        raise SearchtuneError(f"{_culprit(error, path)}: {error.strerror or error}") from None


def make_parent(path: str) -> None:
    """Create the folder that will hold ``path`` (and its parents)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def _open_temp(path: str) -> tuple[str, BinaryIO]:
    temp = temp_path(path)
    for _ in range(3):
        make_parent(path)
        try:
            return temp, open(temp, "xb")
        except FileNotFoundError:
            continue  # a just-created empty folder was removed (a probe cleaning up): make it again
    return temp, open(temp, "xb")


def _write_temp(path: str, data: bytes | None = None, source: str | None = None) -> str:
    temp, handle = _open_temp(path)
    try:
        with handle:
            if source is None:
                handle.write(data or b"")
            else:
                with open(source, "rb") as reader:
                    shutil.copyfileobj(reader, handle, _BLOCK)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return temp


def _read_or_none(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def sha256_hex(data: bytes) -> str:
    """The local generation token of ``data``."""
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _dir_lock(path: str) -> Iterator[None]:
    """Exclusive flock on the directory holding ``path``: serialises local CAS writers."""
    make_parent(path)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class LocalBackend:
    """Files below local paths (see the module docstring for the write rules)."""

    def exists(self, uri: str) -> bool:
        return os.path.isfile(uri)

    def stat(self, uri: str) -> tuple[int, str]:
        with os_errors(uri):
            info = os.stat(uri)
        if not os.path.isfile(uri):
            raise SearchtuneError(f"{uri}: is a directory, expected a file")
        return info.st_size, str(info.st_mtime_ns)

    def read_bytes(self, uri: str) -> bytes:
        with os_errors(uri), open(uri, "rb") as handle:
            return handle.read()

    def read_into(self, uri: str, sink: BinaryIO) -> None:
        with os_errors(uri), open(uri, "rb") as handle:
            shutil.copyfileobj(handle, sink, _BLOCK)

    def write_bytes(self, uri: str, data: bytes) -> None:
        with os_errors(uri):
            os.replace(_write_temp(uri, data), uri)

    def upload(self, local_path: str, uri: str) -> None:
        if not os.path.isfile(local_path):
            raise missing(local_path)
        with os_errors(uri):
            os.replace(_write_temp(uri, source=local_path), uri)

    copy = upload

    def _create(self, uri: str, temp: str, same_content) -> None:
        try:
            os.link(temp, uri)
        except FileExistsError:
            if not same_content():
                raise PreconditionFailed(f"{uri}: already exists") from None
        finally:
            os.unlink(temp)

    def create_bytes(self, uri: str, data: bytes) -> None:
        with os_errors(uri):
            self._create(uri, _write_temp(uri, data), lambda: _read_or_none(uri) == data)

    def create_file(self, local_path: str, uri: str) -> None:
        if not os.path.isfile(local_path):
            raise missing(local_path)
        with os_errors(uri):
            self._create(uri, _write_temp(uri, source=local_path),
                         lambda: os.path.isfile(uri) and filecmp.cmp(local_path, uri, shallow=False))

    def read_with_generation(self, uri: str) -> tuple[bytes | None, Generation | None]:
        with os_errors(uri):
            data = _read_or_none(uri)
        return (None, None) if data is None else (data, sha256_hex(data))

    def write_if_generation_matches(self, uri: str, data: bytes, generation: Generation | None) -> None:
        with os_errors(uri), _dir_lock(uri):
            current = _read_or_none(uri)
            if (None if current is None else sha256_hex(current)) != generation:
                raise PreconditionFailed(f"{uri}: changed by someone else since it was read")
            temp = _write_temp(uri, data)
            if generation is not None:
                os.replace(temp, uri)
                return
            try:
                os.link(temp, uri)  # belt and braces: never replaces, even without the lock
            except FileExistsError:
                raise PreconditionFailed(f"{uri}: appeared while being created") from None
            finally:
                os.unlink(temp)

    def delete(self, uri: str) -> None:
        with os_errors(uri), contextlib.suppress(FileNotFoundError):
            os.unlink(uri)

    def list_sizes(self, uri: str) -> dict[str, int]:
        if not os.path.isdir(uri):
            _refuse_broken_link(uri)
            return {}
        found = {}
        for directory, dirs, files in os.walk(uri):
            dirs.sort()
            for name in files:
                if is_temp(name):
                    continue
                path = os.path.join(directory, name)
                _refuse_broken_link(path)
                with contextlib.suppress(FileNotFoundError):  # removed while we looked: not there
                    found[path] = os.stat(path).st_size
        return found

    def glob(self, pattern: str) -> list[str]:
        matches = _glob.glob(pattern, recursive=True)
        for path in matches:
            _refuse_broken_link(path)
        return sorted(p for p in matches if os.path.isfile(p))


def _refuse_broken_link(path: str) -> None:
    """A symbolic link that leads nowhere is refused, naming it: listed as a file, it would end in an
    ``OSError [Errno 40]`` traceback (a loop), or be skipped without a word (a dangling link)."""
    if not os.path.islink(path):
        return
    target = ""
    try:
        target = os.readlink(path)
        os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):  # else the link itself was removed meanwhile: not there
            raise SearchtuneError(f"{path}: a symbolic link to {target}, which does not exist") from None
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        raise SearchtuneError(f"{path}: a symbolic link loop (it leads back to itself through {target}); "
                              "remove it or point it at a file") from None
