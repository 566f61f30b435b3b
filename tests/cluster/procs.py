"""Processes the cluster tests start: servers on loopback ports and the pipelines as users run them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "vla"  # the bucket the S3 server of conftest.py holds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def pythonpath() -> str:
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def run_pipeline(script: str, args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``python pipelines/<script> ARGS`` from the repository root, as a user runs it.

    This checkout's ``vla`` comes first on the path (as in a Ray job's working directory).
    """
    return subprocess.run(
        [sys.executable, f"pipelines/{script}", *args],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": pythonpath()},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
