"""Prove that the locks install from public indexes alone: pip's configuration and environment ignored.

    python images/check_install.py      # what `make check-install` and CI run

Each lock is resolved by ``pip install --isolated --dry-run --ignore-installed``: no pip.conf,
no PIP_* variable, no local wheel folder or extra index can stand in for a package that the
public indexes lack (``--isolated`` drops them all; only the CA bundle is passed on, for
networks that intercept TLS). pip reads metadata only, so nothing large is downloaded. The
test extras are resolved too, against the CPU lock, since `make test` installs them.

Where the PyTorch CPU index (the one index outside PyPI, named in
``requirements-torch-cpu.lock``) cannot be reached, pip says so and resolves ``torch==X``
from PyPI; the check then proves the version exists but not its ``+cpu`` build.
"""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKS = {
    "torch-cpu": ["--no-deps", "-r", "images/requirements-torch-cpu.lock"],
    "cpu": ["--no-deps", "-r", "images/requirements-cpu.lock"],
    "gpu": ["--no-deps", "-r", "images/requirements-gpu.lock"],
    "test extras": ["-c", "images/requirements-cpu.lock", ".[test]"],
}


def ca_bundle() -> list[str]:
    """``--cert PATH`` for the CA bundle that this environment's tools are told to trust, if any."""
    for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        if os.environ.get(name) and os.path.isfile(os.environ[name]):
            return ["--cert", os.environ[name]]
    return []


def check(name: str, arguments: list[str]) -> bool:
    command = [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed",
               "--disable-pip-version-check", "--quiet", *ca_bundle(), *arguments]
    started = time.time()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - started
    if result.returncode != 0:
        reason = [line for line in result.stderr.splitlines() if line.startswith("ERROR")] or result.stderr.splitlines()[-3:]
        print(f"{name}: does not resolve from public indexes ({seconds:.0f} s): {' '.join(reason)}")
        return False
    unreachable = "/whl/cpu/" in result.stderr
    note = "; the PyTorch CPU index was unreachable, torch resolved from PyPI" if unreachable else ""
    print(f"{name}: resolves from public indexes ({seconds:.0f} s){note}")
    return True


def main() -> int:
    # pip waits on the network most of the time: the four resolutions run side by side.
    with ThreadPoolExecutor(len(CHECKS)) as pool:
        results = list(pool.map(lambda item: check(*item), CHECKS.items()))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
