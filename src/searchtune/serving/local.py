"""Run ``searchtune serve`` as a child process on 127.0.0.1 and wait until it is ready.

For the tests and the load benchmark, which talk to the real server over real sockets.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from searchtune.errors import SearchtuneError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalServer:
    """``searchtune serve --host 127.0.0.1 --port <free> <args>`` as a context manager.

    Args:
        args: arguments after ``serve`` (``--model-dir`` ... and limits).
        log_path: file for the server's stdout and stderr.
        ready_timeout: seconds to wait for ``/v2/health/ready``.
        env: extra environment variables (e.g. ``OMP_NUM_THREADS``).

    Attributes:
        url: ``http://127.0.0.1:<port>``.
        ready_statuses: every status ``/v2/health/ready`` answered while starting (0 = no connection).
    """

    def __init__(self, args: list[str], log_path: str, ready_timeout: float = 180.0, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "searchtune.cli.main", "serve", "--host", "127.0.0.1",
                        "--port", str(self.port), *args]
        self.log_path, self.ready_timeout = log_path, ready_timeout
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.ready_statuses: list[int] = []
        self.process: subprocess.Popen | None = None

    def _status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return 0

    def __enter__(self) -> LocalServer:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            status = self._status("/v2/health/ready")
            if not self.ready_statuses or self.ready_statuses[-1] != status:
                self.ready_statuses.append(status)
            if status == 200:
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        with open(self.log_path, errors="replace") as log:
            tail = log.read()[-3000:]
        raise SearchtuneError(f"the server did not become ready (statuses {self.ready_statuses}); log tail:\n{tail}")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 20 s; returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __exit__(self, *exc) -> None:
        self.stop()
