"""`diskplane import ... --server URL`: the job runs in a real service subprocess."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cdi.service.conftest import MiB, raw_equal, write_sparse_raw
from tests.cdi.service.servicectl import ServiceProcess
from tests.support.http_server import FileServer

CLI_TIMEOUT = 120


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess.start(tmp_path / "service-data", tmp_path / "service.log")
    yield process
    process.stop()


def _import(client_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "controllers.cli", "--data-dir", str(client_dir), "import"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=CLI_TIMEOUT)


def test_import_with_server_runs_in_the_service(
    service: ServiceProcess, http_server: FileServer, tmp_path: Path
) -> None:
    raw = write_sparse_raw(http_server.root / "d.raw", 8 * MiB, seed=31)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    run = _import(
        tmp_path / "client-data", http_server.url("d.raw"), "--volume", "ns/remote",
        "--size", "16Mi", "--checksum", f"sha256:{digest}", "--server", service.url,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "import ns/remote: import succeeded" in run.stderr
    assert "100.0%" in run.stderr  # the service's progress bar, one line per 10 %
    disk = tmp_path / "service-data" / "volumes" / "ns" / "remote" / "disk.img"
    assert raw_equal(disk, raw)
    assert not (tmp_path / "client-data" / "volumes").exists()  # nothing ran in-process
    jobs = service.call("GET", "/v1/imports")["items"]
    assert [job["source"] for job in jobs] == [{"http": {"url": http_server.url("d.raw")}}]


def test_import_with_server_reports_failures(
    service: ServiceProcess, http_server: FileServer, tmp_path: Path
) -> None:
    write_sparse_raw(http_server.root / "d.raw", 2 * MiB, seed=32)
    bad = _import(
        tmp_path / "c", http_server.url("d.raw"), "--volume", "ns/bad", "--size", "8Mi",
        "--checksum", "sha256:" + "1" * 64, "--server", service.url,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "import failed" in bad.stderr
    local = _import(
        tmp_path / "c", str(http_server.root / "d.raw"), "--volume", "ns/l", "--size", "8Mi",
        "--server", service.url,
    )  # fmt: skip
    assert local.returncode == 1
    assert "diskplane upload" in local.stderr
    down = _import(
        tmp_path / "c", "--blank", "--volume", "ns/b", "--size", "8Mi",
        "--server", "http://127.0.0.1:9",
    )  # fmt: skip
    assert down.returncode == 75, down.stderr
