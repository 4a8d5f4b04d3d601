"""The DataVolume reconciler on the embedded store with the real import pipeline."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import containerdisk
from cdi import ImportSettings, VolumePool
from controllers.api import DATAVOLUME, EVENT, NAMESPACE, PERSISTENTVOLUMECLAIM
from controllers.api.kinds import SECRET
from controllers.errors import NotFound
from controllers.reconcile import Controller, EventRecorder
from controllers.reconcilers import FINALIZER, DataVolumeReconciler, requested_size
from controllers.reconcilers.local_importer import LocalImporter
from controllers.store import EmbeddedStore, WatchEvent
from controllers.store.kubernetes import KubernetesStore
from tests.support.http_server import Faults, FileServer
from tests.support.kube import KubeCluster
from tests.support.registry import Registry
from tests.support.s3 import S3Server

PHASE_TIMEOUT = 60.0
MiB = 1 << 20


@dataclass
class Stack:
    store: EmbeddedStore
    pool: VolumePool
    controller: Controller


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    store = await EmbeddedStore.open(tmp_path)
    pool = VolumePool.for_data_dir(tmp_path)
    importer = LocalImporter(pool, ImportSettings(progress_interval=0.01), max_restarts=1)
    reconciler = DataVolumeReconciler(store, importer, EventRecorder(store))
    controller = Controller("datavolumes", store, DATAVOLUME, reconciler)
    importer.set_listener(controller.enqueue)
    task = asyncio.create_task(controller.run(), name="dv-controller")
    try:
        yield Stack(store, pool, controller)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await importer.close()
        await store.close()


def dv(name: str, source: dict[str, Any], size: str = "64Mi") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"source": source, "storage": {"resources": {"requests": {"storage": size}}}},
    }


async def statuses_until(
    store: EmbeddedStore, name: str, phases: set[str], rv: str = ""
) -> list[dict[str, Any]]:
    """Every status the DataVolume shows until its phase is one of ``phases``."""
    seen: list[dict[str, Any]] = []

    async def follow() -> None:
        event: WatchEvent
        async for event in store.watch(DATAVOLUME, "default", rv):
            if event.object["metadata"]["name"] != name:
                continue
            status = event.object.get("status") or {}
            seen.append(status)
            if status.get("phase") in phases:
                return

    await asyncio.wait_for(follow(), PHASE_TIMEOUT)
    return seen


async def recorded_event(store: EmbeddedStore, name: str, reason: str) -> dict[str, Any]:
    """The Event with ``reason`` about DataVolume ``name``, once it is recorded."""

    async def follow() -> dict[str, Any]:
        async for event in store.watch(EVENT, "default"):
            obj = event.object
            if obj["involvedObject"]["name"] == name and obj["reason"] == reason:
                return obj
        raise AssertionError("the store closed the watch")

    return await asyncio.wait_for(follow(), PHASE_TIMEOUT)


def write_disk(root: Path, name: str, size: int) -> str:
    data = os.urandom(size)
    (root / name).write_bytes(data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_http_import_succeeds_with_progress_and_events(
    stack: Stack, http_server: FileServer
) -> None:
    checksum = write_disk(http_server.root, "disk.raw", 48 * MiB)
    source = {"http": {"url": http_server.url("disk.raw"), "checksum": checksum}}
    created = await stack.store.create(DATAVOLUME, dv("web", source))
    seen = await statuses_until(
        stack.store, "web", {"Succeeded", "Failed"}, created["metadata"]["resourceVersion"]
    )
    final = seen[-1]
    assert final["phase"] == "Succeeded", final
    assert final["progress"] == "100.0%"
    assert final["claimName"] == "web"
    conditions = {c["type"]: (c["status"], c.get("reason", "")) for c in final["conditions"]}
    assert conditions == {
        "Bound": ("True", "Bound"),
        "Running": ("False", "Completed"),
        "Ready": ("True", ""),
    }
    phases = [s.get("phase") for s in seen if s.get("phase")]
    assert "ImportInProgress" in phases
    percents = [
        float(s["progress"].rstrip("%"))
        for s in seen
        if s.get("phase") == "ImportInProgress" and s.get("progress", "N/A") != "N/A"
    ]
    assert percents == sorted(percents)
    volume = stack.pool.get("default", "web")
    assert volume.capacity == requested_size(dv("web", source)["spec"])
    served = (http_server.root / "disk.raw").read_bytes()
    assert volume.disk_path.read_bytes()[: len(served)] == served  # raw grows to the volume
    current = await stack.store.get(DATAVOLUME, "default", "web")
    assert FINALIZER in current["metadata"]["finalizers"]
    succeeded = await recorded_event(stack.store, "web", "ImportSucceeded")
    assert succeeded["message"] == "Successfully imported into PVC web"
    await recorded_event(stack.store, "web", "ImportScheduled")


async def test_bad_checksum_fails_with_the_reason(stack: Stack, http_server: FileServer) -> None:
    write_disk(http_server.root, "disk.raw", 4 * MiB)
    source = {"http": {"url": http_server.url("disk.raw"), "checksum": "sha256:" + "0" * 64}}
    await stack.store.create(DATAVOLUME, dv("bad", source))
    final = (await statuses_until(stack.store, "bad", {"Succeeded", "Failed"}))[-1]
    assert final["phase"] == "Failed"
    running = next(c for c in final["conditions"] if c["type"] == "Running")
    assert running["reason"] == "ChecksumError"
    assert running["message"]
    failed = await recorded_event(stack.store, "bad", "ImportFailed")
    assert failed["type"] == "Warning"


async def test_blank_then_delete_removes_the_volume(stack: Stack) -> None:
    await stack.store.create(DATAVOLUME, dv("blank", {"blank": {}}, "16Mi"))
    final = (await statuses_until(stack.store, "blank", {"Succeeded", "Failed"}))[-1]
    assert final["phase"] == "Succeeded", final
    assert stack.pool.get("default", "blank").disk_path.exists()
    claim = await stack.store.get(PERSISTENTVOLUMECLAIM, "default", "blank")
    owner = claim["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("DataVolume", "blank", True)
    assert claim["status"]["phase"] == "Bound"
    listing = await stack.store.list(DATAVOLUME, "default")
    await stack.store.delete(DATAVOLUME, "default", "blank")
    await statuses_until_deleted(stack.store, "blank", listing.resource_version)
    with pytest.raises(NotFound):
        await stack.store.get(DATAVOLUME, "default", "blank")
    with pytest.raises(NotFound):  # the claim went with its owner
        await stack.store.get(PERSISTENTVOLUMECLAIM, "default", "blank")
    assert not (stack.pool.root / "default" / "blank").exists()


async def test_delete_mid_import_cancels_the_job(stack: Stack, http_server: FileServer) -> None:
    write_disk(http_server.root, "slow.raw", 4 * MiB)
    http_server.set_faults("slow.raw", Faults(stall_seconds=5))
    await stack.store.create(DATAVOLUME, dv("slow", {"http": {"url": http_server.url("slow.raw")}}))
    await statuses_until(stack.store, "slow", {"ImportInProgress"})
    listing = await stack.store.list(DATAVOLUME, "default")
    await stack.store.delete(DATAVOLUME, "default", "slow")
    await statuses_until_deleted(stack.store, "slow", listing.resource_version)
    assert not (stack.pool.root / "default" / "slow").exists()


async def statuses_until_deleted(store: EmbeddedStore, name: str, rv: str) -> None:
    async def follow() -> None:
        async for event in store.watch(DATAVOLUME, "default", rv):
            if event.object["metadata"]["name"] == name and event.type == "DELETED":
                return

    await asyncio.wait_for(follow(), PHASE_TIMEOUT)


async def test_s3_source_with_secret_ref(stack: Stack, s3_server: S3Server) -> None:
    data = os.urandom(3 * MiB)
    s3_server.create_bucket("disks")
    s3_server.put_object("disks", "disk.raw", data)
    await stack.store.create(
        SECRET,
        {
            "metadata": {"name": "s3-keys", "namespace": "default"},
            "data": {
                "accessKeyId": base64.b64encode(s3_server.access_key.encode()).decode(),
                "secretKey": base64.b64encode(s3_server.secret_key.encode()).decode(),
            },
        },
    )
    source = {
        "s3": {
            "url": "s3://disks/disk.raw",
            "endpoint": s3_server.endpoint_url,
            "secretRef": "s3-keys",
            "checksum": "sha256:" + hashlib.sha256(data).hexdigest(),
        }
    }
    await stack.store.create(DATAVOLUME, dv("from-s3", source, "8Mi"))
    final = (await statuses_until(stack.store, "from-s3", {"Succeeded", "Failed"}))[-1]
    assert final["phase"] == "Succeeded", final
    disk = stack.pool.get("default", "from-s3").disk_path.read_bytes()
    assert disk[: len(data)] == data


async def test_registry_source_persistent_containerdisk(
    stack: Stack, registry: Registry, tmp_path: Path
) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(2 * MiB))
    ref = f"{registry.host}/vm/disk:v1"
    async with containerdisk.RegistryClient(
        username=registry.username, password=registry.password, ca_file=registry.ca_file
    ) as client:
        await client.push_disk(disk, ref)
    await stack.store.create(DATAVOLUME, dv("pcd", {"registry": {"url": f"docker://{ref}"}}, "8Mi"))
    final = (await statuses_until(stack.store, "pcd", {"Succeeded", "Failed"}))[-1]
    assert final["phase"] == "Succeeded", final
    imported = stack.pool.get("default", "pcd").disk_path.read_bytes()
    assert imported[: 2 * MiB] == disk.read_bytes()


async def test_clone_from_another_datavolume(stack: Stack, http_server: FileServer) -> None:
    write_disk(http_server.root, "base.raw", 2 * MiB)
    await stack.store.create(
        DATAVOLUME, dv("base", {"http": {"url": http_server.url("base.raw")}}, "8Mi")
    )
    assert (await statuses_until(stack.store, "base", {"Succeeded", "Failed"}))[-1][
        "phase"
    ] == "Succeeded"
    clone = dv("copy", {"pvc": {"namespace": "default", "name": "base"}}, "8Mi")
    await stack.store.create(DATAVOLUME, clone)
    final = (await statuses_until(stack.store, "copy", {"Succeeded", "Failed"}))[-1]
    assert final["phase"] == "Succeeded", final
    original = stack.pool.get("default", "base").disk_path.read_bytes()
    copied = stack.pool.get("default", "copy").disk_path.read_bytes()
    assert copied[: 2 * MiB] == original[: 2 * MiB]


def test_requested_size_follows_cdi() -> None:
    storage = {"storage": {"resources": {"requests": {"storage": "1Gi"}}}}
    assert requested_size(storage) == math.ceil(1024 * MiB * 1.06)
    pvc = {"pvc": {"resources": {"requests": {"storage": "1Gi"}}}}
    assert requested_size(pvc) == 1024 * MiB
    block = {"storage": {"volumeMode": "Block", "resources": {"requests": {"storage": "1Gi"}}}}
    assert requested_size(block) == 1024 * MiB


@pytest.mark.kube
async def test_on_kubernetes_the_datavolume_owns_a_pvc(
    tmp_path: Path, kube_cluster: KubeCluster
) -> None:
    store = KubernetesStore.from_kubeconfig(str(kube_cluster.kubeconfig), kube_cluster.context)
    importer = LocalImporter(VolumePool.for_data_dir(tmp_path))
    reconciler = DataVolumeReconciler(
        store, importer, EventRecorder(store), bind_claims_locally=False
    )
    controller = Controller("datavolumes", store, DATAVOLUME, reconciler)
    importer.set_listener(controller.enqueue)
    namespace = f"dv-{uuid.uuid4().hex[:8]}"
    await store.create(NAMESPACE, {"metadata": {"name": namespace}})
    task = asyncio.create_task(controller.run(), name="dv-controller-kube")
    try:
        blank = dv("blank", {"blank": {}}, "16Mi")
        blank["metadata"]["namespace"] = namespace
        await store.create(DATAVOLUME, blank)

        async def until(predicate: Any) -> None:
            listing = await store.list(DATAVOLUME, namespace)
            if any(predicate(o) for o in listing.items):
                return
            async for event in store.watch(DATAVOLUME, namespace, listing.resource_version):
                if predicate(event.object):
                    return

        await asyncio.wait_for(
            until(lambda o: (o.get("status") or {}).get("phase") == "Succeeded"), PHASE_TIMEOUT
        )
        claim = await store.get(PERSISTENTVOLUMECLAIM, namespace, "blank")
        assert claim["metadata"]["ownerReferences"][0]["kind"] == "DataVolume"
        assert claim["spec"]["resources"]["requests"]["storage"] == str(
            requested_size(blank["spec"])
        )
        current = await store.get(DATAVOLUME, namespace, "blank")
        bound = next(c for c in current["status"]["conditions"] if c["type"] == "Bound")
        assert bound["status"] == "False"  # no provisioner in the test cluster: Pending
        listing = await store.list(PERSISTENTVOLUMECLAIM, namespace)
        await store.delete(DATAVOLUME, namespace, "blank")

        async def claim_gone() -> None:
            async for event in store.watch(
                PERSISTENTVOLUMECLAIM, namespace, listing.resource_version
            ):
                if event.type == "DELETED":
                    return

        await asyncio.wait_for(claim_gone(), PHASE_TIMEOUT)
        with pytest.raises(NotFound):
            await store.get(DATAVOLUME, namespace, "blank")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await importer.close()
        await store.delete(NAMESPACE, "", namespace)
        await store.close()
