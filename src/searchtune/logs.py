"""Logging set-up shared by the CLI and the KFP component entry points."""

import contextlib
import logging
import os

LEVEL_ENV = "SEARCHTUNE_LOG_LEVEL"


def setup(level: str | None = None) -> None:
    """Send searchtune's log records to stderr with a timestamp and the step's name.

    A level given here is also exported in ``SEARCHTUNE_LOG_LEVEL``, so the pipeline steps
    that ``searchtune run`` starts as subprocesses log at the same level.
    """
    if level:
        os.environ[LEVEL_ENV] = level
    level = level or os.environ.get(LEVEL_ENV, "INFO")
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    # Third-party libraries are chatty at INFO; their warnings still come through.
    for noisy in ("urllib3", "google", "httpx", "filelock", "evidently"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


ERROR_FILE_ENV = "SEARCHTUNE_ERROR_FILE"


@contextlib.contextmanager
def component_step(name: str):
    """Entry point of a KFP component: logging on, and a user error ends the step cleanly.

    A ``SearchtuneError`` is logged as one line and the step exits non-zero without a
    traceback (the task fails, so nothing downstream runs). When the local runner set
    ``SEARCHTUNE_ERROR_FILE``, the message is also appended there, so ``searchtune run``
    can say which step failed and why.
    """
    from searchtune.errors import SearchtuneError

    setup()
    try:
        yield
    except SearchtuneError as error:
        message = f"step {name} failed: {error}"
        logging.getLogger(f"searchtune.{name}").error(message)
        error_file = os.environ.get(ERROR_FILE_ENV)
        if error_file:
            with open(error_file, "a", encoding="utf-8") as handle:
                handle.write(message + "\n")
        raise SystemExit(message) from None
