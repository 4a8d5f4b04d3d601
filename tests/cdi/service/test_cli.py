"""`diskplane upload` on a real service (via a connection-dropping proxy); TLS and API token."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cdi.service import ServiceConfigError, ServiceSettings
from tests.cdi.service.conftest import MiB, qemu_img, raw_equal, write_sparse_raw
from tests.cdi.service.servicectl import ServiceProcess
from tests.support.process import free_port, http_answers, start_server, stop_server

CLI_TIMEOUT = 120


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess.start(tmp_path / "data", tmp_path / "service.log")
    yield process
    process.stop()


def test_upload_command_resumes_after_a_dropped_connection(
    service: ServiceProcess, fault_proxy: Callable[[str], Any], tmp_path: Path
) -> None:
    raw = write_sparse_raw(tmp_path / "disk.raw", 16 * MiB, seed=21)
    image = tmp_path / "disk.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(image))
    proxy = fault_proxy(service.url)
    proxy.drop_request_after("PUT", r"^/v1/uploads/", image.stat().st_size // 2, times=1)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "controllers.cli",
            "upload",
            str(image),
            "--volume",
            "default/cli",
            "--size",
            "32Mi",
            "--url",
            proxy.url,
        ],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert "import succeeded" in result.stderr
    puts = [r for r in proxy.log if r.method == "PUT"]
    assert len(puts) >= 2
    assert puts[0].fault is not None
    disk = tmp_path / "data" / "volumes" / "default" / "cli" / "disk.img"
    assert raw_equal(disk, raw)


def test_upload_command_reports_a_wrong_checksum(service: ServiceProcess, tmp_path: Path) -> None:
    raw = write_sparse_raw(tmp_path / "disk.raw", 2 * MiB, seed=22)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "controllers.cli",
            "upload",
            str(raw),
            "--volume",
            "default/bad",
            "--size",
            "8Mi",
            "--url",
            service.url,
            "--checksum",
            "sha256:" + "1" * 64,
        ],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert result.returncode == 1
    assert "import failed" in result.stderr
    assert not (tmp_path / "data" / "volumes" / "default" / "bad").exists()


def test_tls_listener_and_api_token(tmp_path: Path, test_ca: Any) -> None:
    cert = test_ca.issue(tmp_path / "tls")
    token_file = tmp_path / "api-token"
    token_file.write_text("s3cret-api-token\n")
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    context = test_ca.client_ssl_context()
    argv = [
        sys.executable,
        "-m",
        "controllers.cli",
        "--data-dir",
        str(tmp_path / "data"),
        "importer",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--tls-cert",
        str(cert.cert_file),
        "--tls-key",
        str(cert.key_file),
        "--api-token-file",
        str(token_file),
    ]
    process = start_server(
        argv, tmp_path / "tls.log", lambda: http_answers(url + "/healthz", context)
    )
    try:
        assert _status(url + "/v1/imports", context) == 401
        assert _status(url + "/v1/imports", context, "s3cret-api-token") == 200
        assert _status(url + "/readyz", context) == 200
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url + "/healthz", timeout=10)  # untrusted without the CA
    finally:
        stop_server(process)


def _status(url: str, context: ssl.SSLContext, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            json.loads(response.read())
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.parametrize(
    ("host", "token", "tls", "ok"),
    [
        pytest.param("127.0.0.1", None, False, True, id="loopback-open"),
        pytest.param("0.0.0.0", None, False, False, id="exposed-without-anything"),
        pytest.param("0.0.0.0", "t", False, False, id="exposed-without-tls"),
        pytest.param("0.0.0.0", "t", True, True, id="exposed-with-tls-and-token"),
    ],
)
def test_exposed_listener_needs_tls_and_token(
    tmp_path: Path, host: str, token: str | None, tls: bool, ok: bool
) -> None:
    files = {"tls_cert": tmp_path / "c", "tls_key": tmp_path / "k"} if tls else {}
    settings = ServiceSettings(data_dir=tmp_path, host=host, api_token=token, **files)
    if ok:
        settings.validate()
    else:
        with pytest.raises(ServiceConfigError, match="not loopback"):
            settings.validate()
