"""Logging set-up shared by the CLI and the KFP component entry points.

One level for a whole run: ``searchtune --log-level X run`` exports it in
``SEARCHTUNE_LOG_LEVEL``, every step subprocess inherits it and ``component_step`` applies
it, so the steps log at the level the user chose. What reaches the terminal of
``searchtune run`` is decided there (``searchtune.orchestration.local_run``): the full
output of every step goes to the run's ``pipeline.log``.
"""

import collections
import contextlib
import io
import logging
import os
import re
import sys
import time
from pathlib import Path

LEVEL_ENV = "SEARCHTUNE_LOG_LEVEL"
DEFAULT_LEVEL = "INFO"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A line in LOG_FORMAT (possibly indented by the runner that forwards a step's output).
_RECORD = re.compile(r"^\s*\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
NOISY_LIBRARIES = ("urllib3", "google", "httpx", "filelock", "evidently", "transformers", "huggingface_hub", "kfp")


def level() -> str:
    """The run's level name: the one exported by ``setup``, else INFO."""
    return os.environ.get(LEVEL_ENV, DEFAULT_LEVEL).upper()


def setup(level_name: str | None = None) -> None:
    """Send searchtune's log records to stderr with a timestamp and the logger's name.

    A level given here is also exported in ``SEARCHTUNE_LOG_LEVEL``, so the pipeline steps
    that ``searchtune run`` starts as subprocesses log at the same level.
    """
    if level_name:
        os.environ[LEVEL_ENV] = level_name.upper()
    chosen = level()
    logging.basicConfig(level=chosen, format=LOG_FORMAT, datefmt="%H:%M:%S", force=True)
    # Third-party libraries are chatty at INFO; their warnings still come through (all of it at DEBUG).
    for noisy in NOISY_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.DEBUG if chosen == "DEBUG" else logging.WARNING)


def record_level(line: str) -> int | None:
    """The level of a line written in ``LOG_FORMAT``, or None for any other line."""
    match = _RECORD.match(line)
    return None if match is None else logging.getLevelName(match.group(1))


ERROR_FILE_ENV = "SEARCHTUNE_ERROR_FILE"
# Marks an error-file line as a fault of the machine (exit 5), not of the input (exit 2).
ENVIRONMENT_MARK = "[environment] "


@contextlib.contextmanager
def component_step(name: str):
    """Entry point of a KFP component: logging on, and a user error ends the step cleanly.

    A ``SearchtuneError`` is logged as one line and the step exits non-zero without a
    traceback (the task fails, so nothing downstream runs); so is an OS error that is a
    fault of the machine (full disk, read-only folder, link loop: ``errors.environment_fault``).
    When the local runner set ``SEARCHTUNE_ERROR_FILE``, the message is also appended there,
    so ``searchtune run`` can say which step failed and why.
    """
    from searchtune.errors import EnvironmentFault, SearchtuneError, environment_fault

    setup()
    try:
        yield
    except SearchtuneError as error:
        _fail_step(name, error, isinstance(error, EnvironmentFault))
    except Exception as error:
        fault = environment_fault(error)
        if fault is None:
            raise
        _fail_step(name, fault, True)


def _fail_step(name: str, error: Exception, environment: bool):
    message = f"step {name} failed: {error}"
    logging.getLogger(f"searchtune.{name}").error(message)
    error_file = os.environ.get(ERROR_FILE_ENV)
    if error_file:
        with open(error_file, "a", encoding="utf-8") as handle:
            handle.write((ENVIRONMENT_MARK if environment else "") + message + "\n")
    raise SystemExit(message) from None


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
TASK_START = re.compile(r"Executing task '([^']+)'")
TASK_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
FAILURE_TAIL_LINES = 30


class PipelineConsole(io.TextIOBase):
    """What ``searchtune run`` shows while kfp.local runs the steps (it stands in for stdout).

    Every line goes to ``log_path``. The terminal (stderr) gets, at INFO (the default), one
    line per step start and end (``describe_step`` adds the step's counts), the steps'
    warnings and errors, a progress bar from their progress events, and the end of a
    crashed step's output; at WARNING, only warnings and errors; at DEBUG, everything as
    kfp.local prints it (executor dumps included).

    Args:
        log_path: the run's full log.
        run_folder: returns the kfp.local run folder (it exists once the run started).
        describe_step: ``(step, step folder) -> str`` or None.
        terminal: where the terminal lines go (default ``sys.stderr``).
        level_name: the run's level (default: ``level()``).
    """

    def __init__(self, log_path, run_folder, describe_step=None, terminal=None, level_name: str | None = None):
        from searchtune.progress import TerminalBar

        self.log_path = log_path
        self.terminal = terminal or sys.stderr
        self.level = logging.getLevelName(level_name or level())
        self.bar = TerminalBar(self.terminal)
        self.run_folder, self.describe_step = run_folder, describe_step
        self._log = None
        self._pending = ""
        self._task: str | None = None
        self._started = 0.0
        self._tail: collections.deque = collections.deque(maxlen=FAILURE_TAIL_LINES)
        self._errors_shown = False

    def __enter__(self):
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        # Records logged in this process meanwhile (kfp.local's "Skipping task ...") come here too.
        root = logging.getLogger()
        self._saved_handlers = root.handlers[:]
        handler = logging.StreamHandler(self)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        root.handlers = [handler]
        return self

    def __exit__(self, kind, error, trace):
        if self._pending:
            self._line(self._pending)
            self._pending = ""
        if self._task is not None:  # kfp.local raises on a failed task before it logs the task's end
            self._end(self._task, "FAILURE" if kind else "SUCCESS")
        self.bar.close()
        logging.getLogger().handlers = self._saved_handlers
        self._log.close()
        return False

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        if self._log is not None:
            self._log.flush()

    def say(self, text: str) -> None:
        """A line for the terminal (and the log)."""
        if self._log is not None:
            self._log.write(text + "\n")
        self.bar.write(text)

    def _line(self, raw: str) -> None:
        from searchtune.progress import parse_event

        line = ANSI_ESCAPE.sub("", raw)
        event = parse_event(line)
        if event is not None:
            self.bar.update(self._task or "", event)
            return
        self._log.write(line + "\n")
        self._log.flush()  # the log is for following a run as it goes (tail -f), not only afterwards
        start, end = TASK_START.search(line), TASK_END.search(line)
        if start:
            self._begin(start.group(1))
        if self.level <= logging.DEBUG:
            self.bar.write(raw)
        if end:
            self._end(end.group(1), end.group(2))
        elif self._task is not None and line.strip():
            self._tail.append(line)
        severity = record_level(line)
        if self.level > logging.DEBUG and severity is not None and severity >= max(self.level, logging.WARNING):
            self.bar.write(line.strip())
            self._errors_shown |= severity >= logging.ERROR

    def _begin(self, task: str) -> None:
        self._task, self._started, self._errors_shown = task, time.monotonic(), False
        self._tail.clear()
        if logging.DEBUG < self.level <= logging.INFO:
            self.say(f"{time.strftime('%H:%M:%S')} {task:<15} started")

    def _end(self, task: str, status: str) -> None:
        self.bar.close()
        seconds = time.monotonic() - self._started
        self._task = None
        if status != "SUCCESS":
            self.say(f"{time.strftime('%H:%M:%S')} {task:<15} FAILED after {seconds:.1f} s")
            if not self._errors_shown:  # a crash: its traceback is in the last lines
                for line in self._tail:
                    self.say("    " + line.strip())
            self.say(f"full log: {self.log_path}")
            return
        if logging.DEBUG < self.level <= logging.INFO:
            folder = self.run_folder()
            counts = ""
            if self.describe_step is not None and folder is not None:
                try:
                    counts = self.describe_step(task, Path(folder, task))
                except Exception:  # noqa: BLE001 - a step's description must never fail the run
                    counts = ""
            self.say(f"{time.strftime('%H:%M:%S')} {task:<15} done in {seconds:.1f} s" + (f": {counts}" if counts else ""))
