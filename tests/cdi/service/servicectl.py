"""The importer service as a real subprocess (``diskplane importer serve``), driven over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.process import free_port, http_answers, start_server, stop_server

# Bounds every wait on a service subprocess in these tests.
WAIT_TIMEOUT = 90.0
POLL_INTERVAL = 0.05


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    url: str
    log_file: Path

    @classmethod
    def start(cls, data_dir: Path, log_file: Path, *extra: str) -> ServiceProcess:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [
            sys.executable,
            "-m",
            "controllers.cli",
            "--data-dir",
            str(data_dir),
            "importer",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            *extra,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        process = start_server(argv, log_file, lambda: http_answers(url + "/readyz"), env=env)
        return cls(process, url, log_file)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()!r}") from exc

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"/v1/imports/{job_id}")
        return result

    def wait_until(self, predicate: Any, what: str, timeout: float = WAIT_TIMEOUT) -> None:
        """Poll (a subprocess offers no event to await), bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.process.poll() is not None:
                raise AssertionError(f"service exited while waiting for {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(POLL_INTERVAL)

    def wait_finished(self, job_id: str) -> dict[str, Any]:
        self.wait_until(
            lambda: self.job(job_id)["phase"] in ("Succeeded", "Failed", "Cancelled"),
            f"job {job_id} to finish",
        )
        return self.job(job_id)

    def peak_rss(self) -> int:
        """VmHWM: the process's peak resident set, in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc status")

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(WAIT_TIMEOUT)

    def stop(self) -> None:
        stop_server(self.process)
