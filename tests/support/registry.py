"""Real OCI registries: Debian's ``docker-registry`` (distribution 2.8).

Fixtures (see docs/testing.md), each a function-scoped view on a session
subprocess started from a generated config in a temp dir (never the shipped
/etc config, which listens on all interfaces):

- ``registry``: plain HTTP;
- ``registry_auth``: htpasswd basic auth (bcrypt, ``htpasswd -Bbn``);
- ``registry_tls``: HTTPS with a certificate from the session CA.

Before each test the storage is emptied (no blob descriptor cache is
configured, so the registry cannot remember removed blobs) and the access log
is read from the current end on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import ssl
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

from tests.support.certs import CertAuthority
from tests.support.http_server import basic_authorization
from tests.support.process import free_port, http_answers, start_server, stop_server

REGISTRY_BINARY = "docker-registry"
# How long wait_for_request polls the access log.
LOG_WAIT_TIMEOUT = 5.0
_ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) ')
_UPLOAD_PATH = re.compile(r"^/v2/(?P<repo>.+)/blobs/uploads/")

Kind = Literal["plain", "auth", "tls"]


@dataclass(frozen=True)
class RegistryRequest:
    """One line of the registry's access log."""

    method: str
    path: str
    status: int

    @property
    def repository(self) -> str | None:
        match = _UPLOAD_PATH.match(self.path) or re.match(
            r"^/v2/(?P<repo>.+)/(blobs|manifests|tags)/", self.path
        )
        return match.group("repo") if match else None


@dataclass
class Registry:
    """A running docker-registry; optional fields depend on the variant."""

    kind: Kind
    host: str  # 127.0.0.1:PORT
    data_dir: Path
    log_file: Path
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    certs_dir: Path | None = None  # holds ca.crt, for skopeo --cert-dir
    _log_offset: int = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.kind == "tls" else "http"
        return f"{scheme}://{self.host}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting the registry's CA (``None`` unless TLS)."""
        if self.ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_file))

    def headers(self) -> dict[str, str]:
        """Request headers that authenticate (empty unless ``registry_auth``)."""
        if self.username is None or self.password is None:
            return {}
        return {"Authorization": basic_authorization(self.username, self.password)}

    def skopeo_flags(self, role: Literal["src", "dest"]) -> list[str]:
        """skopeo options to reach this registry as ``--src-*`` or ``--dest-*``."""
        flags = [f"--{role}-tls-verify={'true' if self.kind == 'tls' else 'false'}"]
        if self.certs_dir is not None:
            flags.append(f"--{role}-cert-dir={self.certs_dir}")
        if self.username is not None:
            flags.append(f"--{role}-creds={self.username}:{self.password}")
        return flags

    def requests(self) -> list[RegistryRequest]:
        """Requests the registry logged since this test started, oldest first.

        The registry writes a line after the response went out, so the last
        request may show up a moment after the client saw the answer; use
        ``wait_for_request`` when that matters.
        """
        with self.log_file.open("rb") as log:
            log.seek(self._log_offset)
            text = log.read().decode(errors="replace")
        return [
            RegistryRequest(m["method"], m["path"], int(m["status"]))
            for m in _ACCESS_LINE.finditer(text)
        ]

    def blob_uploads(self, repository: str | None = None) -> list[RegistryRequest]:
        """POST/PATCH/PUT requests to ``/v2/<repo>/blobs/uploads/``."""
        return [
            r
            for r in self.requests()
            if r.method in ("POST", "PATCH", "PUT")
            and _UPLOAD_PATH.match(r.path)
            and (repository is None or r.repository == repository)
        ]

    def wait_for_request(
        self, predicate: Callable[[RegistryRequest], bool], timeout: float = LOG_WAIT_TIMEOUT
    ) -> list[RegistryRequest]:
        """Poll the access log until a request matches; return all requests (blocking)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.requests()
            if any(predicate(r) for r in seen):
                return seen
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"registry {self.host} logged no matching request in {timeout} s"
                )
            time.sleep(0.02)

    def reset(self) -> None:
        """Empty the storage and start the access log view at its current end."""
        for child in self.data_dir.iterdir():
            shutil.rmtree(child, ignore_errors=True)
        self._log_offset = self.log_file.stat().st_size


@dataclass(frozen=True)
class OciLayout:
    """A one-layer OCI image layout on disk, for ``skopeo copy oci:<path>:<tag>``."""

    path: Path
    tag: str
    layer_digest: str
    manifest_digest: str

    @property
    def reference(self) -> str:
        return f"oci:{self.path}:{self.tag}"


def write_oci_layout(path: Path, files: dict[str, bytes], tag: str = "v1") -> OciLayout:
    """Write an image layout whose single uncompressed tar layer holds ``files``."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    layer_desc = _put_blob(blobs, layer.getvalue(), "application/vnd.oci.image.layer.v1.tar")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    manifest_type = "application/vnd.oci.image.manifest.v1+json"
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": _put_blob(
            blobs, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"
        ),
        "layers": [layer_desc],
    }
    manifest_desc = _put_blob(blobs, json.dumps(manifest).encode(), manifest_type)
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "manifests": [manifest_desc]}
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return OciLayout(path, tag, str(layer_desc["digest"]), str(manifest_desc["digest"]))


def _put_blob(blobs: Path, data: bytes, media_type: str) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _config(directory: Path, port: int, kind: Kind) -> dict[str, object]:
    http: dict[str, object] = {"addr": f"127.0.0.1:{port}", "secret": "diskplane-test-secret"}
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(directory / "data")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }
    if kind == "auth":
        config["auth"] = {"htpasswd": {"realm": "diskplane", "path": str(directory / "htpasswd")}}
    if kind == "tls":
        http["tls"] = {
            "certificate": str(directory / "tls" / "server.crt"),
            "key": str(directory / "tls" / "server.key"),
        }
    return config


@contextlib.contextmanager
def _running_registry(kind: Kind, ca: CertAuthority | None = None) -> Iterator[Registry]:
    directory = Path(tempfile.mkdtemp(prefix=f"diskplane-registry-{kind}-"))
    port = free_port()
    registry = Registry(
        kind=kind,
        host=f"127.0.0.1:{port}",
        data_dir=directory / "data",
        log_file=directory / "registry.log",
    )
    registry.data_dir.mkdir()
    if kind == "auth":
        registry.username, registry.password = "diskplane", "s3cret-pass"
        htpasswd = subprocess.run(
            ["htpasswd", "-Bbn", registry.username, registry.password],
            check=True,
            capture_output=True,
            timeout=30,
        )
        (directory / "htpasswd").write_bytes(htpasswd.stdout)
    context = None
    if kind == "tls":
        assert ca is not None
        ca.issue(directory / "tls")
        registry.certs_dir = directory / "certs.d"
        registry.certs_dir.mkdir()
        registry.ca_file = registry.certs_dir / "ca.crt"
        shutil.copyfile(ca.cert_file, registry.ca_file)
        context = ca.client_ssl_context()
    config_file = directory / "config.yml"
    config_file.write_text(yaml.safe_dump(_config(directory, port, kind)))
    process = start_server(
        [REGISTRY_BINARY, "serve", str(config_file)],
        registry.log_file,
        lambda: http_answers(f"{registry.url}/v2/", context),
    )
    try:
        yield registry
    finally:
        stop_server(process)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def _registry_session() -> Iterator[Registry]:
    with _running_registry("plain") as registry:
        yield registry


@pytest.fixture(scope="session")
def _registry_auth_session() -> Iterator[Registry]:
    with _running_registry("auth") as registry:
        yield registry


@pytest.fixture(scope="session")
def _registry_tls_session(test_ca: CertAuthority) -> Iterator[Registry]:
    with _running_registry("tls", test_ca) as registry:
        yield registry


@pytest.fixture
def registry(_registry_session: Registry) -> Registry:
    """Plain-HTTP docker-registry, emptied for this test."""
    _registry_session.reset()
    return _registry_session


@pytest.fixture
def registry_auth(_registry_auth_session: Registry) -> Registry:
    """docker-registry with htpasswd basic auth (``.username``/``.password``)."""
    _registry_auth_session.reset()
    return _registry_auth_session


@pytest.fixture
def registry_tls(_registry_tls_session: Registry) -> Registry:
    """docker-registry over TLS (``.ca_file``, ``.certs_dir``)."""
    _registry_tls_session.reset()
    return _registry_tls_session
