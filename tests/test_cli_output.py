"""What ``searchtune run`` prints: one line per step start and end, warnings and errors, a progress
bar, the final block; kfp.local's executor dumps only at DEBUG; everything in the run's log.

The console is tested on kfp.local's own line formats, then on one real run of the CLI
(the one run here: an untrained adapter, which also checks the gate refuses it).
"""

import io
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from searchtune import logs, progress, records
from searchtune.registry import ModelRegistry

START = "07:00:00.100 - INFO - Executing task \x1b[96m'ingest'\x1b[0m"
STREAMED = "07:00:00.101 - INFO - Streamed logs:"
DUMP = ['    [KFP Executor 2026-11-24 07:00:01,000 INFO]: Got executor_input:', '    {', '        "inputs": {"x": 1}', '    }']
INFO = "    07:00:02 INFO searchtune.steps.ingest: read 9590 rows from 1 file(s)"
WARNING = "    07:00:02 WARNING searchtune.steps.ingest: 3 rows rejected: empty query"
EVENT = '    @searchtune-progress {"what": "reading", "done": 5, "total": 10, "unit": "rows"}'
END = "07:00:03.000 - INFO - Task \x1b[96m'ingest'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m"
OUTPUTS = ["07:00:03.001 - INFO - Task 'ingest' outputs:", "    splits: Dataset( name='splits',", "-" * 80]
TRACEBACK = ["    Traceback (most recent call last):", '      File "x.py", line 1, in <module>', "    ZeroDivisionError: division by zero"]


class Terminal(io.StringIO):
    def __init__(self, tty: bool = False):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def console_output(tmp_path, lines, level_name="INFO", tty=False, fail=False) -> tuple[list[str], str]:
    """Feed kfp.local's lines to a console as kfp.local does (print to stdout); return (terminal lines, log)."""
    terminal = Terminal(tty)
    console = logs.PipelineConsole(tmp_path / "pipeline.log", lambda: tmp_path, lambda step, folder: f"described {step}",
                                   terminal=terminal, level_name=level_name)
    with pytest.raises(RuntimeError) if fail else _nothing():
        with console:
            for line in lines:
                print(line, file=console)
            if fail:
                raise RuntimeError("Task 'ingest' finished with status FAILURE")
    return terminal.getvalue().splitlines(), (tmp_path / "pipeline.log").read_text()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_at_the_default_level_a_step_is_two_lines_and_its_warnings(tmp_path):
    shown, log_text = console_output(tmp_path, [START, STREAMED, *DUMP, INFO, WARNING, EVENT, END, *OUTPUTS])
    assert len(shown) == 3, shown
    assert re.fullmatch(r"\d\d:\d\d:\d\d ingest +started", shown[0])
    assert shown[1] == WARNING.strip()
    assert re.fullmatch(r"\d\d:\d\d:\d\d ingest +done in \d+\.\d s: described ingest", shown[2])
    # The log keeps everything, without terminal colours and without progress events.
    assert "Got executor_input" in log_text and INFO.strip() in log_text and "'ingest' finished with status SUCCESS" in log_text
    assert "\x1b[" not in log_text and "@searchtune-progress" not in log_text


def test_warning_shows_only_problems_and_debug_shows_everything(tmp_path):
    lines = [START, STREAMED, *DUMP, INFO, WARNING, END, *OUTPUTS]
    shown, _ = console_output(tmp_path, lines, level_name="WARNING")
    assert shown == [WARNING.strip()]
    shown, _ = console_output(tmp_path, lines, level_name="DEBUG")
    assert shown == lines  # as kfp.local prints it, executor dump included


def test_a_crash_shows_the_end_of_the_step_output_with_its_traceback(tmp_path):
    shown, _ = console_output(tmp_path, [START, STREAMED, *DUMP, INFO, *TRACEBACK], fail=True)
    assert re.fullmatch(r"\d\d:\d\d:\d\d ingest +FAILED after \d+\.\d s", shown[1])
    assert [line.strip() for line in shown[-4:-1]] == [line.strip() for line in TRACEBACK]
    assert shown[-1] == f"full log: {tmp_path / 'pipeline.log'}"


def test_a_user_error_is_shown_once_without_the_steps_output(tmp_path):
    error = "    07:00:02 ERROR searchtune.steps.ingest: step ingest failed: data.csv: the file is empty"
    shown, _ = console_output(tmp_path, [START, STREAMED, *DUMP, INFO, error, "    step ingest failed: data.csv"], fail=True)
    assert shown[1] == error.strip() and "FAILED after" in shown[2] and shown[3].startswith("full log: ")
    assert len(shown) == 4


def test_progress_events_draw_a_bar_on_a_terminal_and_nothing_elsewhere(tmp_path):
    events = [f'    @searchtune-progress {{"what": "epoch 1/2", "done": {n}, "total": 90, "unit": "rows"}}' for n in (30, 60, 90)]
    shown, _ = console_output(tmp_path, [START, *events, END])
    assert len(shown) == 2  # started, done: no event became a line
    terminal = Terminal(tty=True)
    console = logs.PipelineConsole(tmp_path / "tty.log", lambda: None, terminal=terminal, level_name="INFO")
    with console:
        for line in [START, *events]:
            print(line, file=console)
    drawn = terminal.getvalue()
    assert "ingest: epoch 1/2" in drawn and re.search(r"100%\|[#█]+\| 90(\.0)?/90", drawn), drawn


def test_a_step_emits_progress_events_when_searchtune_run_reads_it(monkeypatch, capsys):
    monkeypatch.setattr(progress, "EVENT_EVERY_SECONDS", 0.0)
    monkeypatch.setenv(progress.EVENTS_ENV, "1")
    assert list(progress.track(range(4), 4 * 32, "scoring", unit="rows", scale=32, logger=logging.getLogger("t"))) == [0, 1, 2, 3]
    events = [progress.parse_event(line) for line in capsys.readouterr().err.splitlines()]
    assert all(events) and events[-1] == {"what": "scoring", "done": 128, "total": 128, "unit": "rows"}
    list(progress.track(range(4), 100, "chunks", unit="rows", scale=32))  # the last chunk is shorter: the count ends at 100
    assert [progress.parse_event(line)["done"] for line in capsys.readouterr().err.splitlines()][-2:] == [100, 100]


def test_the_log_level_reaches_the_steps_and_their_libraries(monkeypatch):
    # setenv (not delenv of an absent variable) makes monkeypatch restore the variable's absence afterwards:
    # a level left in os.environ would reach every later test's subprocesses.
    monkeypatch.setenv(logs.LEVEL_ENV, "INFO")
    logs.setup("warning")
    try:
        assert logs.level() == "WARNING" and logging.getLogger().level == logging.WARNING
        logs.setup()  # what a step subprocess does: the inherited level applies
        assert logging.getLogger().level == logging.WARNING and logging.getLogger("transformers").level == logging.WARNING
        assert logs.record_level("    07:00:02 WARNING searchtune.steps.ingest: y") == logging.WARNING and logs.record_level("{") is None
    finally:
        monkeypatch.setenv(logs.LEVEL_ENV, "INFO")
        logs.setup()


@pytest.mark.slow
def test_a_default_run_prints_at_most_40_lines_and_the_paths_to_open(tmp_path):
    """The default command on the bundled data, with an untrained adapter (learning rate 1e-9) so the run is short:
    the gate refuses it (it ranks like the untuned base), and the terminal stays short."""
    result = subprocess.run(
        [sys.executable, "-m", "searchtune.cli", "run", "--learning-rate", "1e-9", "--epochs", "1", "--max-train-rows", "256",
         "--registry", str(tmp_path / "registry"), "--output-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 3, result.stderr[-3000:]  # finished, not promoted
    (root,) = (tmp_path / "runs").iterdir()
    (run_dir,) = [d for d in root.iterdir() if d.is_dir() and d.name != "model"]
    blessing = records.Blessing.read(str(run_dir / "evaluate" / "evaluation"))
    assert not blessing.blessed and blessing.decided_by == "beats_base", blessing.reason
    assert "does not beat untuned base" in blessing.reason
    assert ModelRegistry(str(tmp_path / "registry")).models() == []

    printed = (result.stdout + result.stderr).splitlines()
    assert len(printed) <= 40, "\n".join(printed)
    assert max(len(line) for line in printed) < 400
    assert "executor_input" not in result.stdout + result.stderr
    for step in ("preflight", "ingest", "tokenize", "finetune", "champion", "evaluate", "record-refusal"):
        assert sum(bool(re.match(rf"\d\d:\d\d:\d\d {step} +(started|done in)", line)) for line in printed) == 2, step
    assert f"NOT BLESSED: {blessing.reason}" in result.stdout
    assert result.stdout.rstrip().endswith("searchtune run --no-require-beat-base registers it anyway")  # what to do next
    assert "drift:    no reference yet (no production model yet)" in result.stdout
    paths = dict(re.findall(r"^  (report|summary|model|log): +(\S+)", result.stdout, flags=re.M))
    assert paths["report"].endswith(".html") and paths["summary"].endswith(".md") and paths["log"].endswith(".log")
    assert Path(paths["report"]).read_text().startswith("<!doctype html>")
    assert records.ModelRecord.read(paths["model"]).train_rows == 256
    assert "Got executor_input" in Path(paths["log"]).read_text()
