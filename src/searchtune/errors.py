"""The one exception type users see as a one-line message instead of a traceback."""


class SearchtuneError(Exception):
    """A problem with the user's input or environment, stated so it can be fixed.

    The CLI prints ``str(error)`` alone (no traceback) and exits with status 2.
    Steps raise it for bad data, missing columns, unreachable storage and so on;
    anything else is a bug and keeps its traceback.
    """
