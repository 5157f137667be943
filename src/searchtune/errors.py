"""The exception types users see as a one-line message instead of a traceback."""

import errno
import re


class SearchtuneError(Exception):
    """A problem with the user's input or environment, stated so it can be fixed.

    The CLI prints ``str(error)`` alone (no traceback) and exits with status 2.
    Steps raise it for bad data, missing columns, unreachable storage and so on;
    anything else is a bug and keeps its traceback.
    """


class EnvironmentFault(SearchtuneError):
    """The machine refused what the run needed: a full disk, a read-only or wrong kind of folder, a link loop.

    Not the user's input and not a bug: the CLI prints it as one line and exits with
    status 5, so a schedule can tell "fix the machine" from "fix the data" and "fix the code".
    """


# errno values that say the machine, not the data or the code, failed an operation.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a path component is not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EEXIST: "already exists, and is not a folder",
    errno.ELOOP: "too many levels of symbolic links (a link loop)",
    errno.EIO: "input/output error",
}


def environment_fault(error: BaseException) -> EnvironmentFault | None:
    """The one-line fault an OS error (or a native library's "os error N") stands for; None if it is not one."""
    number = getattr(error, "errno", None)
    if number is None:
        # Native writers (safetensors, arrow) report the OS error inside their own message.
        found = re.search(r"os error (\d+)", str(error))
        number = int(found.group(1)) if found else None
    if number not in ENVIRONMENT_ERRNOS:
        return None
    path = getattr(error, "filename", None) or _open_file_in_traceback(error)
    where = f"{path}: " if path else ""
    detail = "" if isinstance(error, OSError) else f" ({type(error).__name__}: {first_line(error)})"
    return EnvironmentFault(f"{where}{ENVIRONMENT_ERRNOS[number]}{detail}")


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none: for one-line reports."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _open_file_in_traceback(error: BaseException) -> str | None:
    """The file a failed write went to: ``write()`` errors carry no file name, the open file object does."""
    import io

    frames = []
    trace = error.__traceback__
    while trace is not None:
        frames.append(trace.tb_frame)
        trace = trace.tb_next
    for frame in reversed(frames):  # innermost first: the write that failed
        for value in frame.f_locals.values():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return value.name
    return None
