"""A real Kubernetes control plane for the suite: etcd + kube-apiserver (+ controller-manager).

etcd is Debian's ``etcd-server``; kube-apiserver and kube-controller-manager
1.20.2 are built from Debian's source package by ``scripts/build-kube.sh`` and
cached under ``$DISKPLANE_CACHE_DIR`` (default ``~/.cache/diskplane``)
``/kube/1.20.2/``. Everything listens on 127.0.0.1 free ports; the apiserver
serves TLS with a throw-away CA and authenticates one static token (group
``system:masters``). The CRDs from ``charts/diskplane/crds/`` are applied
before the controller-manager starts, so its garbage collector knows them.

``kube_cluster`` (session-scoped) skips with a reason when the binaries are
missing, unless ``CI=true``: then their absence fails the run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.certs import create_ca

KUBE_VERSION = "1.20.2"
CRD_DIR = Path(__file__).resolve().parents[2] / "charts" / "diskplane" / "crds"
# Bounded waits (a child process offers no event to await, so these poll).
ETCD_START_TIMEOUT = 30.0
APISERVER_START_TIMEOUT = 120.0
CRD_ESTABLISH_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.1


def kube_bin_dir() -> Path:
    root = os.environ.get("DISKPLANE_CACHE_DIR") or str(Path.home() / ".cache" / "diskplane")
    return Path(root) / "kube" / KUBE_VERSION


@dataclass(frozen=True)
class KubeCluster:
    """How to reach the suite's API server."""

    url: str
    token: str
    ca_file: Path
    kubeconfig: Path
    context: str
    has_controller_manager: bool

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A raw API call (for tests that check the server itself)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Content-Type", "application/json")
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(req, timeout=10, context=context) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(what: str, ready: Any, process: subprocess.Popen[bytes], log: Path, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}): {_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {limit} s: {_tail(log)}")
        time.sleep(POLL_INTERVAL)


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-3000:]
    except OSError:
        return "<no log>"


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


def _start_etcd(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    client, peer = _free_port(), _free_port()
    url = f"http://127.0.0.1:{client}"
    argv = [
        shutil.which("etcd") or "/usr/bin/etcd",
        "--name=diskplane",
        f"--data-dir={work / 'etcd'}",
        f"--listen-client-urls={url}",
        f"--advertise-client-urls={url}",
        f"--listen-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-cluster=diskplane=http://127.0.0.1:{peer}",
        "--log-level=warn",
    ]
    log = work / "etcd.log"
    process = _spawn(argv, log)

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    _wait("etcd", healthy, process, log, ETCD_START_TIMEOUT)
    return process, url


def _write_credentials(work: Path) -> tuple[str, Path, Path, Path, Path]:
    ca = create_ca(work / "pki")
    server = ca.issue(work / "pki", "apiserver", ("127.0.0.1", "localhost"))
    sa_key = ec.generate_private_key(ec.SECP256R1())
    sa_file = work / "pki" / "sa.key"
    sa_file.write_bytes(
        sa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    token = secrets.token_hex(16)
    tokens = work / "tokens.csv"
    tokens.write_text(f'{token},diskplane-admin,diskplane-admin,"system:masters"\n')
    return token, ca.cert_file, server.cert_file, server.key_file, sa_file


def _start_apiserver(work: Path, etcd_url: str) -> tuple[subprocess.Popen[bytes], KubeCluster]:
    token, ca_file, cert, key, sa_file = _write_credentials(work)
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    issuer = "https://kubernetes.default.svc.cluster.local"
    argv = [
        str(kube_bin_dir() / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        "--insecure-port=0",
        f"--tls-cert-file={cert}",
        f"--tls-private-key-file={key}",
        f"--cert-dir={work / 'certs'}",
        f"--token-auth-file={work / 'tokens.csv'}",
        "--authorization-mode=RBAC",
        f"--service-account-issuer={issuer}",
        f"--service-account-key-file={sa_file}",
        f"--service-account-signing-key-file={sa_file}",
        f"--api-audiences={issuer}",
        "--service-cluster-ip-range=10.96.0.0/24",
        "--disable-admission-plugins=ServiceAccount",
        "--enable-priority-and-fairness=false",
        "--profiling=false",
        "--v=1",
    ]
    log = work / "kube-apiserver.log"
    process = _spawn(argv, log)
    kubeconfig = _write_kubeconfig(work, url, token, ca_file)
    cluster = KubeCluster(url, token, ca_file, kubeconfig, "diskplane-test", False)

    def ready() -> bool:
        try:
            status, _ = cluster.request("GET", "/api/v1/namespaces/default")
        except OSError:
            return False
        return status == 200

    _wait("kube-apiserver", ready, process, log, APISERVER_START_TIMEOUT)
    return process, cluster


def _write_kubeconfig(work: Path, url: str, token: str, ca_file: Path) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "diskplane-test",
                "cluster": {"server": url, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [
            {"name": "diskplane-test", "context": {"cluster": "diskplane-test", "user": "admin"}}
        ],
        "current-context": "diskplane-test",
    }
    path = work / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def apply_crds(cluster: KubeCluster) -> list[str]:
    """Create (or replace) the chart's CRDs and wait until each is Established."""
    names = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        name = crd["metadata"]["name"]
        base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        status, body = cluster.request("POST", base, crd)
        if status == 409:
            _, current = cluster.request("GET", f"{base}/{name}")
            crd["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            status, body = cluster.request("PUT", f"{base}/{name}", crd)
        if status not in (200, 201):
            raise RuntimeError(f"CRD {name} from {path.name} was rejected ({status}): {body}")
        names.append(name)
    deadline = time.monotonic() + CRD_ESTABLISH_TIMEOUT
    for name in names:
        while not _established(cluster, name):
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD {name} not Established after {CRD_ESTABLISH_TIMEOUT} s")
            time.sleep(POLL_INTERVAL)
    return names


def _established(cluster: KubeCluster, name: str) -> bool:
    status, body = cluster.request(
        "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
    )
    conditions = ((body or {}).get("status") or {}).get("conditions") or [] if status == 200 else []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def _start_controller_manager(work: Path, cluster: KubeCluster) -> subprocess.Popen[bytes]:
    argv = [
        str(kube_bin_dir() / "kube-controller-manager"),
        f"--kubeconfig={cluster.kubeconfig}",
        "--controllers=garbagecollector,namespace,persistentvolume-binder,pvc-protection",
        "--leader-elect=false",
        "--port=0",
        "--secure-port=0",
        "--use-service-account-credentials=false",
        "--v=1",
    ]
    return _spawn(argv, work / "kube-controller-manager.log")


def _binaries_or_skip() -> None:
    missing = [
        str(p)
        for p in (kube_bin_dir() / "kube-apiserver", Path(shutil.which("etcd") or "/usr/bin/etcd"))
        if not p.exists()
    ]
    if not missing:
        return
    reason = f"real Kubernetes binaries missing ({', '.join(missing)}); run scripts/build-kube.sh"
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: the setup must build them)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    """etcd + kube-apiserver (+ kube-controller-manager) with the chart's CRDs applied."""
    _binaries_or_skip()
    work = Path(tempfile.mkdtemp(prefix="diskplane-kube-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        etcd, etcd_url = _start_etcd(work)
        processes.append(etcd)
        apiserver, cluster = _start_apiserver(work, etcd_url)
        processes.append(apiserver)
        apply_crds(cluster)
        manager_bin = kube_bin_dir() / "kube-controller-manager"
        if manager_bin.exists():
            processes.append(_start_controller_manager(work, cluster))
            cluster = KubeCluster(
                cluster.url,
                cluster.token,
                cluster.ca_file,
                cluster.kubeconfig,
                cluster.context,
                True,
            )
        yield cluster
    finally:
        for process in reversed(processes):
            _stop(process)
        shutil.rmtree(work, ignore_errors=True)
