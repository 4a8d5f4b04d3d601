"""Starting and stopping the suite's server subprocesses (moto_server, docker-registry)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# How long a server subprocess may take to answer its first request.
START_TIMEOUT = 30.0
# How long it may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.05


class ServerStartError(RuntimeError):
    """A test server subprocess exited or never answered."""


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_answers(url: str, context: ssl.SSLContext | None = None) -> bool:
    """True once ``url`` answers any HTTP status."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def start_server(
    argv: Sequence[str],
    log_file: Path,
    ready: Callable[[], bool],
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with output to ``log_file``; return once ``ready()`` holds.

    The readiness check polls (a child process offers no event to await); the
    wait is bounded by ``START_TIMEOUT``.
    """
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if process.poll() is not None:
            raise ServerStartError(
                f"{argv[0]} exited with {process.returncode} while starting; "
                f"log tail: {_tail(log_file)}"
            )
        if time.monotonic() > deadline:
            stop_server(process)
            raise ServerStartError(
                f"{argv[0]} did not answer within {START_TIMEOUT} s; log tail: {_tail(log_file)}"
            )
        time.sleep(POLL_INTERVAL)
    return process


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait, SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return "<no log>"
