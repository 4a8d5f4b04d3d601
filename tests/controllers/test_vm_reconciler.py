"""The VirtualMachine reconciler on the embedded store: DataVolumes, VMI per runStrategy,
printableStatus. The VMI's own status is written here the way the node agent will."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from cdi import VolumePool
from controllers.api import DATAVOLUME, VIRTUALMACHINE, VIRTUALMACHINEINSTANCE
from controllers.errors import NotFound
from controllers.reconcile import Controller, EventRecorder
from controllers.reconcilers import DataVolumeReconciler
from controllers.reconcilers.local_importer import LocalImporter
from controllers.reconcilers.virtualmachine import VirtualMachineReconciler
from controllers.store import EmbeddedStore
from tests.support.http_server import FileServer

WAIT = 60.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    store = await EmbeddedStore.open(tmp_path)
    importer = LocalImporter(VolumePool.for_data_dir(tmp_path))
    recorder = EventRecorder(store)
    dvs = Controller(
        "datavolumes", store, DATAVOLUME, DataVolumeReconciler(store, importer, recorder)
    )
    importer.set_listener(dvs.enqueue)
    vms = Controller(
        "virtualmachines",
        store,
        VIRTUALMACHINE,
        VirtualMachineReconciler(store, recorder, crash_backoff_s=(0.2, 1.0)),
        owns=(DATAVOLUME, VIRTUALMACHINEINSTANCE),
    )
    tasks = [
        asyncio.create_task(dvs.run(), name="dv-controller"),
        asyncio.create_task(vms.run(), name="vm-controller"),
    ]
    try:
        yield store
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await importer.close()
        await store.close()


def vm(name: str, strategy: str, source: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "runStrategy": strategy,
            "dataVolumeTemplates": [
                {
                    "metadata": {"name": f"{name}-root"},
                    "spec": {
                        "source": source or {"blank": {}},
                        "storage": {"resources": {"requests": {"storage": "16Mi"}}},
                    },
                }
            ],
            "template": {
                "spec": {
                    "domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
                    "volumes": [{"name": "root", "dataVolume": {"name": f"{name}-root"}}],
                }
            },
        },
    }


async def vm_until(
    store: EmbeddedStore, name: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    async def follow() -> dict[str, Any]:
        async for event in store.watch(VIRTUALMACHINE, "default"):
            if event.object["metadata"]["name"] == name and check(event.object.get("status") or {}):
                return event.object
        raise AssertionError("watch ended")

    return await asyncio.wait_for(follow(), WAIT)


def printable(value: str) -> Callable[[dict[str, Any]], bool]:
    return lambda status: status.get("printableStatus") == value


async def agent_reports(store: EmbeddedStore, name: str, phase: str, ready: bool = False) -> None:
    """What the node agent will do: write the VMI's status."""
    status: dict[str, Any] = {"phase": phase}
    if ready:
        status["conditions"] = [{"type": "Ready", "status": "True"}]
    await store.patch_status(VIRTUALMACHINEINSTANCE, "default", name, status)


async def test_vm_provisions_starts_runs_and_halts(store: EmbeddedStore) -> None:
    await store.create(VIRTUALMACHINE, vm("web", "Always"))
    await vm_until(store, "web", printable("Starting"))  # DataVolume imported, VMI created
    dv = await store.get(DATAVOLUME, "default", "web-root")
    assert dv["metadata"]["ownerReferences"][0]["kind"] == "VirtualMachine"
    assert dv["status"]["phase"] == "Succeeded"
    vmi = await store.get(VIRTUALMACHINEINSTANCE, "default", "web")
    assert vmi["spec"]["volumes"][0]["dataVolume"]["name"] == "web-root"

    await agent_reports(store, "web", "Running", ready=True)
    running = await vm_until(store, "web", printable("Running"))
    assert running["status"]["ready"] is True
    assert running["status"]["created"] is True

    current = await store.get(VIRTUALMACHINE, "default", "web")
    current["spec"]["runStrategy"] = "Halted"
    await store.update(VIRTUALMACHINE, current)
    stopped = await vm_until(store, "web", printable("Stopped"))
    assert stopped["status"]["ready"] is False
    with pytest.raises(NotFound):
        await store.get(VIRTUALMACHINEINSTANCE, "default", "web")
    # The DataVolume (and its data) outlives the VMI.
    assert (await store.get(DATAVOLUME, "default", "web-root"))["status"]["phase"] == "Succeeded"


async def test_rerun_on_failure_recreates_a_failed_vmi(store: EmbeddedStore) -> None:
    await store.create(VIRTUALMACHINE, vm("job", "RerunOnFailure"))
    await vm_until(store, "job", printable("Starting"))
    first = await store.get(VIRTUALMACHINEINSTANCE, "default", "job")
    await agent_reports(store, "job", "Failed")

    async def replaced() -> dict[str, Any]:
        async for event in store.watch(VIRTUALMACHINEINSTANCE, "default"):
            obj = event.object
            if event.type == "ADDED" and obj["metadata"]["uid"] != first["metadata"]["uid"]:
                return obj
        raise AssertionError("watch ended")

    second = await asyncio.wait_for(replaced(), WAIT)
    assert second["metadata"]["name"] == "job"
    status = (await store.get(VIRTUALMACHINE, "default", "job"))["status"]
    assert status["startFailure"]["consecutiveFailCount"] == 1
    assert status["startFailure"]["lastFailedVMIUID"] == first["metadata"]["uid"]
    await agent_reports(store, "job", "Running", ready=True)
    running = await vm_until(store, "job", printable("Running"))
    assert "startFailure" not in running["status"]  # a good run ends the crash loop


async def test_failed_import_shows_data_volume_error(
    store: EmbeddedStore, http_server: FileServer
) -> None:
    source = {"http": {"url": http_server.url("missing.raw")}}  # 404: a final failure
    await store.create(VIRTUALMACHINE, vm("broken", "Always", source))
    errored = await vm_until(store, "broken", printable("DataVolumeError"))
    assert errored["status"]["created"] is False
