"""``diskplane controllers`` against the real apiserver: one leader reconciles, a second
replica waits and takes over when the first stops."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from controllers.api import DATAVOLUME, NAMESPACE
from controllers.store.kubernetes import KubernetesStore
from tests.controllers.test_cli import LineReader
from tests.support.kube import KubeCluster

pytestmark = pytest.mark.kube
LINE_TIMEOUT = 30.0
PHASE_TIMEOUT = 60.0


def replica(data_dir: Path, cluster: KubeCluster, lease: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "controllers.cli", "--data-dir", str(data_dir), "controllers"]
    argv += ["--kubeconfig", str(cluster.kubeconfig), "--lease", lease]
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def wait_line(lines: LineReader, needle: str) -> None:
    while needle not in lines.line(LINE_TIMEOUT):
        pass


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    process.communicate(timeout=LINE_TIMEOUT)
    return process.returncode


async def succeeded(store: KubernetesStore, namespace: str, name: str) -> None:
    async def follow() -> None:
        async for event in store.watch(DATAVOLUME, namespace):
            status: dict[str, Any] = event.object.get("status") or {}
            if event.object["metadata"]["name"] == name and status.get("phase") == "Succeeded":
                return

    await asyncio.wait_for(follow(), PHASE_TIMEOUT)


def blank(name: str, namespace: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"source": {"blank": {}}, "pvc": {"resources": {"requests": {"storage": "8Mi"}}}},
    }


async def test_leader_reconciles_and_a_standby_takes_over(
    tmp_path: Path, kube_cluster: KubeCluster
) -> None:
    lease = f"lease-{uuid.uuid4().hex[:6]}"
    namespace = f"ctl-{uuid.uuid4().hex[:6]}"
    store = KubernetesStore.from_kubeconfig(str(kube_cluster.kubeconfig), kube_cluster.context)
    await store.create(NAMESPACE, {"metadata": {"name": namespace}})
    first = replica(tmp_path / "a", kube_cluster, lease)
    second: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.to_thread(wait_line, LineReader(first), "leads; reconciling")
        second = replica(tmp_path / "b", kube_cluster, lease)
        second_lines = LineReader(second)
        await asyncio.to_thread(wait_line, second_lines, "waiting for lease")
        await store.create(DATAVOLUME, blank("one", namespace))
        await succeeded(store, namespace, "one")
        assert (tmp_path / "a" / "volumes" / namespace / "one").is_dir()  # the leader did it

        assert await asyncio.to_thread(stop, first) == 0  # releases the lease on the way out
        await asyncio.to_thread(wait_line, second_lines, "leads; reconciling")
        await store.create(DATAVOLUME, blank("two", namespace))
        await succeeded(store, namespace, "two")
        assert (tmp_path / "b" / "volumes" / namespace / "two").is_dir()
    finally:
        codes = [await asyncio.to_thread(stop, p) for p in (first, second) if p is not None]
        await store.delete(NAMESPACE, "", namespace)
        await store.close()
    assert codes == [0] * len(codes)
