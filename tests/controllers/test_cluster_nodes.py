"""``diskplane controllers`` against the real apiserver with node-local imports and the
VMI controller: a real importer service and a real node agent serve on 127.0.0.1 and
are registered as ``Node`` records; kube-controller-manager's PV binder binds the
claim to the ``local`` PV the controller creates in that node's pool."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cdi import VolumeNotFound, VolumePool
from cdi.service import ServiceSettings, create_app
from controllers.api import DATAVOLUME, NAMESPACE, VIRTUALMACHINE, VIRTUALMACHINEINSTANCE
from controllers.api.kinds import PERSISTENTVOLUMECLAIM
from controllers.errors import NotFound
from controllers.node_local import PERSISTENTVOLUME, pv_name
from controllers.nodes import NODE, register_node
from controllers.store.kubernetes import KubernetesStore
from controllers.up import serving
from tests.controllers.test_cli import LineReader
from tests.controllers.test_datavolume_reconciler import MiB, write_disk
from tests.controllers.test_run_controllers import stop, wait_line
from tests.controllers.test_scheduling import agent_on, vmi
from tests.controllers.test_vm_guest import guest_vm
from tests.support.http_server import FileServer
from tests.support.kube import KubeCluster
from virtnode import AccelInfo, AgentSettings, NodeAgent
from virtnode.accel import AccelChoice
from virtnode.api import create_app as create_agent_app
from virtnode.tinyguest import TinyGuest

pytestmark = pytest.mark.kube
WAIT = 60.0
GiB = 1 << 30


def controllers(tmp_path: Path, cluster: KubeCluster, *extra: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "controllers.cli", "--data-dir", str(tmp_path / "ctl")]
    argv += ["controllers", "--kubeconfig", str(cluster.kubeconfig)]
    argv += ["--lease", f"lease-{uuid.uuid4().hex[:6]}", *extra]
    log = (tmp_path / "controllers.log").open("wb")
    with log:
        return subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=log,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )


@pytest.fixture
async def kube(kube_cluster: KubeCluster) -> AsyncIterator[tuple[KubernetesStore, str]]:
    store = KubernetesStore.from_kubeconfig(str(kube_cluster.kubeconfig), kube_cluster.context)
    namespace = f"nl-{uuid.uuid4().hex[:6]}"
    await store.create(NAMESPACE, {"metadata": {"name": namespace}})
    try:
        yield store, namespace
    finally:
        await store.delete(NAMESPACE, "", namespace)
        await store.close()


async def until(
    store: KubernetesStore, kind: Any, namespace: str, name: str, check: Any, since: str = ""
) -> Any:
    """The object once ``check(obj)`` holds, and every status seen (from ``since``) until then."""
    seen: list[dict[str, Any]] = []

    async def follow() -> dict[str, Any]:
        async for event in store.watch(kind, namespace, since):
            obj = event.object
            if obj["metadata"]["name"] == name:
                seen.append(obj.get("status") or {})
                if check(obj):
                    return obj
        raise AssertionError("watch ended")

    return await asyncio.wait_for(follow(), WAIT), seen


async def gone(store: KubernetesStore, kind: Any, namespace: str, name: str) -> None:
    async def poll() -> None:
        while True:
            try:
                await store.get(kind, namespace, name)
            except NotFound:
                return
            await asyncio.sleep(0.2)

    await asyncio.wait_for(poll(), WAIT)


async def test_datavolume_imports_into_the_nodes_pool_through_its_importer(
    tmp_path: Path,
    kube_cluster: KubeCluster,
    kube: tuple[KubernetesStore, str],
    http_server: FileServer,
) -> None:
    store, namespace = kube
    node, node_dir = f"node-{uuid.uuid4().hex[:6]}", tmp_path / "node"
    checksum = write_disk(http_server.root, "disk.raw", 16 * MiB)
    app = create_app(ServiceSettings(data_dir=node_dir, persist_interval_seconds=0.05))
    async with serving(app, "127.0.0.1:0") as importer_url:
        options = ("--importer", importer_url, "--node-data-dir", str(node_dir))
        process = controllers(tmp_path, kube_cluster, *options, "--node-name", node)
        try:
            await asyncio.to_thread(wait_line, LineReader(process), "leads; reconciling")
            await _import_and_delete(store, namespace, node_dir, http_server, checksum)
        finally:
            assert await asyncio.to_thread(stop, process) == 0
            await store.delete(NODE, "", node)


async def _import_and_delete(
    store: KubernetesStore, namespace: str, node_dir: Path, http_server: FileServer, checksum: str
) -> None:
    body = {
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "source": {"http": {"url": http_server.url("disk.raw"), "checksum": checksum}},
            "pvc": {
                "storageClassName": "diskplane-local",
                "resources": {"requests": {"storage": "32Mi"}},
            },
        },
    }
    created = await store.create(DATAVOLUME, body)
    done, seen = await until(
        store,
        DATAVOLUME,
        namespace,
        "web",
        lambda o: (o.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
        created["metadata"]["resourceVersion"],
    )
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert status["progress"] == "100.00%"
    phases = [s.get("phase") for s in seen if s.get("phase")]
    assert phases[0] == "ImportScheduled"  # until the PV binder binds the claim
    bound = next(c for c in status["conditions"] if c["type"] == "Bound")
    assert bound["status"] == "True"

    claim = await store.get(PERSISTENTVOLUMECLAIM, namespace, "web")
    assert claim["status"]["phase"] == "Bound"
    pv = await store.get(PERSISTENTVOLUME, "", pv_name(claim))
    assert claim["spec"]["volumeName"] == pv["metadata"]["name"]
    volume_dir = node_dir / "volumes" / namespace / "web"
    assert pv["spec"]["local"]["path"] == str(volume_dir.absolute())
    pool = VolumePool.for_data_dir(node_dir)
    disk = pool.get(namespace, "web").disk_path
    written = await asyncio.to_thread(disk.read_bytes)
    assert "sha256:" + hashlib.sha256(written[: 16 * MiB]).hexdigest() == checksum

    await store.delete(DATAVOLUME, namespace, "web")
    await gone(store, DATAVOLUME, namespace, "web")
    await gone(store, PERSISTENTVOLUMECLAIM, namespace, "web")
    with pytest.raises(VolumeNotFound):
        pool.get(namespace, "web")
    try:
        left = await store.get(PERSISTENTVOLUME, "", pv["metadata"]["name"])
        assert left["metadata"].get("deletionTimestamp")  # held by kubernetes.io/pv-protection
    except NotFound:
        pass


async def test_vmi_is_scheduled_onto_an_agent_registered_in_the_cluster(
    tmp_path: Path, kube_cluster: KubeCluster, kube: tuple[KubernetesStore, str]
) -> None:
    store, namespace = kube
    node = f"agent-{uuid.uuid4().hex[:6]}"
    async with agent_on(tmp_path, node) as agent_url:
        await register_node(store, node, agent_url, 512 * GiB)  # roomier than any other node
        process = controllers(tmp_path, kube_cluster, "--node-local")
        try:
            await asyncio.to_thread(wait_line, LineReader(process), "leads; reconciling")
            body = {**vmi("guest", "64Mi"), "metadata": {"name": "guest", "namespace": namespace}}
            await store.create(VIRTUALMACHINEINSTANCE, body)
            failed, _ = await until(
                store,
                VIRTUALMACHINEINSTANCE,
                namespace,
                "guest",
                lambda o: (o.get("status") or {}).get("phase") == "Failed",
            )
            assert failed["status"]["nodeName"] == node  # the agent refused the missing volume
            assert failed["status"]["reason"] == "FailedCreate"
            await store.delete(VIRTUALMACHINEINSTANCE, namespace, "guest")
            await gone(store, VIRTUALMACHINEINSTANCE, namespace, "guest")
        finally:
            assert await asyncio.to_thread(stop, process) == 0
            await store.delete(NODE, "", node)


def cluster_vm(guest: TinyGuest, namespace: str) -> dict[str, Any]:
    vm = guest_vm(guest)
    vm["metadata"]["namespace"] = namespace
    storage = vm["spec"]["dataVolumeTemplates"][0]["spec"]["storage"]
    storage["storageClassName"] = "diskplane-local"
    return vm


@pytest.mark.guest
async def test_vm_on_a_node_local_datavolume_boots_on_the_registered_agent(
    tmp_path: Path,
    kube_cluster: KubeCluster,
    kube: tuple[KubernetesStore, str],
    tiny_guest: TinyGuest,
    guest_accel: AccelChoice,
) -> None:
    store, namespace = kube
    node, node_dir = f"node-{uuid.uuid4().hex[:6]}", tmp_path / "node"
    accel = AccelInfo(guest_accel.accel, guest_accel.reason, tuple(guest_accel.qemu_args()))
    agent = NodeAgent(AgentSettings(data_dir=node_dir, node_name=node), accel=accel)
    await agent.start()
    app = create_app(ServiceSettings(data_dir=node_dir, persist_interval_seconds=0.05))
    try:
        async with (
            serving(app, "127.0.0.1:0") as importer_url,
            serving(create_agent_app(agent, owns_agent=False), "127.0.0.1:0") as agent_url,
        ):
            options = ("--importer", importer_url, "--agent", agent_url)
            options += ("--node-data-dir", str(node_dir), "--node-name", node)
            process = controllers(tmp_path, kube_cluster, *options)
            try:
                await asyncio.to_thread(wait_line, LineReader(process), "leads; reconciling")
                await _boot_and_halt(store, namespace, agent, tiny_guest, node)
            finally:
                assert await asyncio.to_thread(stop, process) == 0
                await store.delete(NODE, "", node)
    finally:
        for vm in list(agent.vms.values()):
            await agent.delete(vm.spec.namespace, vm.spec.name, grace=1)
        await agent.close()


def printable_is(value: str) -> Any:
    return lambda o: (o.get("status") or {}).get("printableStatus") == value


async def _boot_and_halt(
    store: KubernetesStore, namespace: str, agent: NodeAgent, guest: TinyGuest, node: str
) -> None:
    await store.create(VIRTUALMACHINE, cluster_vm(guest, namespace))
    await until(store, VIRTUALMACHINE, namespace, "tiny", printable_is("Running"))
    await agent.get(namespace, "tiny").console.wait_for(guest.ready_line, limit=WAIT)
    vmi = await store.get(VIRTUALMACHINEINSTANCE, namespace, "tiny")
    assert (vmi["status"]["phase"], vmi["status"]["nodeName"]) == ("Running", node)
    claim = await store.get(PERSISTENTVOLUMECLAIM, namespace, "tiny-data")
    assert claim["status"]["phase"] == "Bound"

    current = await store.get(VIRTUALMACHINE, namespace, "tiny")
    current["spec"]["runStrategy"] = "Halted"
    await store.update(VIRTUALMACHINE, current)
    await until(store, VIRTUALMACHINE, namespace, "tiny", printable_is("Stopped"))
    await gone(store, VIRTUALMACHINEINSTANCE, namespace, "tiny")
    assert agent.list() == []
