"""Faults of the machine, not of the input or the code: one line each, exit 5, before any step where they can be seen.

Full and read-only file systems are real: small tmpfs mounts, made when the tests run as
root (CI does); elsewhere those cases are skipped with the reason.
"""

import contextlib
import os
import subprocess
import uuid

import pytest

from searchtune import logs
from searchtune.cli import exit_codes
from searchtune.cli.main import main
from searchtune.errors import EnvironmentFault, environment_fault
from searchtune.orchestration import output_space

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")


@contextlib.contextmanager
def tmpfs(folder, size: str, read_only: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, f"searchtune-test-{uuid.uuid4().hex[:6]}", str(folder)],
                   check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def run_cli(tmp_path, capsys, output_dir) -> tuple[int, list[str]]:
    code = main(["run", "--registry", str(tmp_path / "registry"), "--output-dir", str(output_dir)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("searchtune: error:")]


def test_an_output_dir_that_is_a_file_is_one_line_and_exit_5(tmp_path, capsys):
    target = tmp_path / "runs"
    target.write_text("not a folder")
    code, errors = run_cli(tmp_path, capsys, target)
    assert code == exit_codes.ENVIRONMENT == 5
    assert errors == [f"searchtune: error: --output-dir {target} is a file, not a folder"]
    assert not (tmp_path / "registry").exists()


def test_an_output_dir_under_a_file_is_one_line_and_exit_5(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, errors = run_cli(tmp_path, capsys, tmp_path / "file" / "runs")
    assert code == 5 and errors == [f"searchtune: error: --output-dir {tmp_path / 'file' / 'runs'} cannot be written: "
                                    "a path component is not a folder"]


@needs_root
def test_a_read_only_output_dir_is_one_line_and_exit_5(tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as folder:
        code, errors = run_cli(tmp_path, capsys, folder)
    assert code == 5 and errors == [f"searchtune: error: --output-dir {folder} cannot be written: read-only file system"]
    assert not (tmp_path / "registry").exists()


@needs_root
def test_an_output_dir_without_room_for_the_run_is_refused_before_any_step(tmp_path, capsys):
    with tmpfs(tmp_path / "small", "20m") as folder:
        code, errors = run_cli(tmp_path, capsys, folder)
        assert os.listdir(folder) == []
    assert code == 5 and len(errors) == 1
    assert f"--output-dir {folder} has 20 MB free; the run needs about 200 MB" in errors[0]
    assert not (tmp_path / "registry").exists()


def test_the_estimate_grows_with_the_input_and_counts_compressed_input_at_four_times(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"x" * 10_000_000)
    (tmp_path / "b.csv.gz").write_bytes(b"x" * 1_000_000)
    assert output_space.estimated_output_bytes(str(tmp_path)) == 2 * (10_000_000 + 4 * 1_000_000) + 200 * 2**20
    assert output_space.estimated_output_bytes("") == 200 * 2**20


@needs_root
def test_a_step_that_fills_the_disk_fails_with_one_environment_line(tmp_path, monkeypatch):
    error_file = tmp_path / "errors"
    monkeypatch.setenv(logs.ERROR_FILE_ENV, str(error_file))
    with tmpfs(tmp_path / "full", "1m") as folder:
        with pytest.raises(SystemExit) as stopped, logs.component_step("finetune"):
            with open(folder / "model.safetensors", "wb") as handle:
                handle.write(b"\0" * 2 * 2**20)
    assert str(stopped.value) == f"step finetune failed: {folder / 'model.safetensors'}: no space left on the device"
    assert error_file.read_text() == logs.ENVIRONMENT_MARK + str(stopped.value) + "\n"


@needs_root
def test_a_native_writers_disk_full_error_is_an_environment_fault(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    with tmpfs(tmp_path / "full", "1m") as folder:
        with pytest.raises(Exception) as raised:
            save_file({"w": torch.zeros(1_000_000)}, str(folder / "adapter.safetensors"))
    fault = environment_fault(raised.value)
    assert isinstance(fault, EnvironmentFault)
    assert str(fault).startswith("no space left on the device (")


def test_a_link_loop_is_an_environment_fault_naming_the_path(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(OSError) as raised:
        open(tmp_path / "a")
    assert str(environment_fault(raised.value)) == f"{tmp_path / 'a'}: too many levels of symbolic links (a link loop)"


def test_a_bug_is_not_an_environment_fault():
    assert environment_fault(ValueError("bad value")) is None
    assert environment_fault(FileNotFoundError(2, "No such file or directory", "x")) is None
    with pytest.raises(ZeroDivisionError), logs.component_step("evaluate"):
        raise ZeroDivisionError("a bug keeps its traceback")


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly():
    """``searchtune run --help | head -1``: no BrokenPipeError traceback, exit 0."""
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte
    result = subprocess.run([sys.executable, "-m", "searchtune.cli", "run", "--help"], stdout=write_end,
                            stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write_end)
    assert result.returncode == 0 and result.stderr == ""
