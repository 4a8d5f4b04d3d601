"""A VirtualMachine on a DataVolume boots the suite's tiny guest through the node agent,
then halts: Provisioning -> Running (guest ready line) -> Stopped."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cdi import VolumePool
from controllers.api import DATAVOLUME, VIRTUALMACHINE, VIRTUALMACHINEINSTANCE
from controllers.errors import NotFound
from controllers.nodes import NodeDirectory, forward_agent_events, register_node
from controllers.reconcile import Controller, EventRecorder
from controllers.reconcilers import DataVolumeReconciler
from controllers.reconcilers.local_importer import LocalImporter
from controllers.reconcilers.vmi import PAUSE_ANNOTATION
from controllers.reconcilers.wiring import vm_controllers
from controllers.store import EmbeddedStore
from controllers.up import serving
from virtnode import AccelInfo, AgentSettings, NodeAgent, VmNotFoundError
from virtnode.accel import AccelChoice
from virtnode.api import create_app
from virtnode.tinyguest import TinyGuest, kernel_cmdline

WAIT = 120.0


@pytest.fixture
async def stack(
    tmp_path: Path, guest_accel: AccelChoice
) -> AsyncIterator[tuple[EmbeddedStore, NodeAgent]]:
    store = await EmbeddedStore.open(tmp_path)
    importer = LocalImporter(VolumePool.for_data_dir(tmp_path))
    accel = AccelInfo(guest_accel.accel, guest_accel.reason, tuple(guest_accel.qemu_args()))
    agent = NodeAgent(AgentSettings(data_dir=tmp_path, node_name="node-1"), accel=accel)
    await agent.start()
    served = serving(create_app(agent, owns_agent=False), "127.0.0.1:0")
    agent_url = await served.__aenter__()
    await register_node(store, "node-1", agent_url, 8 << 30)
    nodes = NodeDirectory(store)
    recorder = EventRecorder(store)
    dvs = Controller("dv", store, DATAVOLUME, DataVolumeReconciler(store, importer, recorder))
    importer.set_listener(dvs.enqueue)
    vms, vmis = vm_controllers(store, nodes, recorder)
    tasks = [
        asyncio.create_task(dvs.run(), name="dv-controller"),
        asyncio.create_task(vms.run(), name="vm-controller"),
        asyncio.create_task(vmis.run(), name="vmi-controller"),
        asyncio.create_task(forward_agent_events(agent_url, vmis.enqueue), name="agent-events"),
    ]
    try:
        yield store, agent
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await nodes.close()
        await served.__aexit__(None, None, None)
        for vm in list(agent.vms.values()):
            await agent.delete(vm.spec.namespace, vm.spec.name, grace=1)
        await agent.close()
        await importer.close()
        await store.close()


def guest_vm(guest: TinyGuest) -> dict[str, Any]:
    return {
        "metadata": {"name": "tiny", "namespace": "default"},
        "spec": {
            "runStrategy": "Always",
            "dataVolumeTemplates": [
                {
                    "metadata": {"name": "tiny-data"},
                    "spec": {
                        "source": {"blank": {}},
                        "storage": {"resources": {"requests": {"storage": "16Mi"}}},
                    },
                }
            ],
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "domain": {
                        "memory": {"guest": "256Mi"},
                        "firmware": {
                            "kernelBoot": {
                                "kernelArgs": kernel_cmdline(mode="wait", markdev="/dev/vda"),
                                "host": {
                                    "kernelPath": str(guest.vmlinux),
                                    "initrdPath": str(guest.initrd),
                                },
                            }
                        },
                        "devices": {"disks": [{"name": "data", "disk": {"bus": "virtio"}}]},
                    },
                    "volumes": [{"name": "data", "dataVolume": {"name": "tiny-data"}}],
                }
            },
        },
    }


async def printable(store: EmbeddedStore, value: str) -> dict[str, Any]:
    async def follow() -> dict[str, Any]:
        async for event in store.watch(VIRTUALMACHINE, "default"):
            if (event.object.get("status") or {}).get("printableStatus") == value:
                return event.object
        raise AssertionError("watch ended")

    return await asyncio.wait_for(follow(), WAIT)


@pytest.mark.guest
async def test_vm_boots_the_guest_and_halts(
    stack: tuple[EmbeddedStore, NodeAgent], tiny_guest: TinyGuest
) -> None:
    store, agent = stack
    await store.create(VIRTUALMACHINE, guest_vm(tiny_guest))
    running = await printable(store, "Running")
    assert running["status"]["ready"] is True
    vm = agent.get("default", "tiny")
    await vm.console.wait_for(tiny_guest.ready_line, limit=WAIT)
    vmi = await store.get(VIRTUALMACHINEINSTANCE, "default", "tiny")
    assert vmi["status"]["phase"] == "Running"
    assert vmi["status"]["accelerator"]["name"] in ("tcg", "kvm")
    # KubeVirt's default pod-network NIC, as the agent reports it
    (nic,) = vmi["status"]["interfaces"]
    assert nic["name"] == "default"
    assert nic["ipAddress"] == "10.0.2.15"

    # pause/unpause as `diskplane pause|unpause` ask for it
    for flag, wanted in (("true", "Paused"), ("false", "Running")):
        vmi = await store.get(VIRTUALMACHINEINSTANCE, "default", "tiny")
        vmi["metadata"].setdefault("annotations", {})[PAUSE_ANNOTATION] = flag
        await store.update(VIRTUALMACHINEINSTANCE, vmi)
        await printable(store, wanted)

    current = await store.get(VIRTUALMACHINE, "default", "tiny")
    current["spec"]["runStrategy"] = "Halted"
    await store.update(VIRTUALMACHINE, current)
    await printable(store, "Stopped")
    with pytest.raises(NotFound):
        await store.get(VIRTUALMACHINEINSTANCE, "default", "tiny")
    assert agent.list() == []


MARKER = re.compile(r"DISKPLANE-MARKER-WRITTEN dev=/dev/vda value=\[DISKPLANE-MARKER count=(\d+)\]")


async def marker_count(agent: NodeAgent, since_uid: str | None = None) -> tuple[int, str]:
    """The marker count the guest wrote on this boot, and the VMI's uid."""

    async def booted() -> tuple[int, str]:
        while True:
            try:
                vm = agent.get("default", "tiny")
            except VmNotFoundError:
                vm = None
            uid = vm.obj["metadata"]["uid"] if vm is not None else None
            if vm is not None and uid != since_uid and vm.console is not None:
                await vm.console.wait_for(re.compile(MARKER.pattern.encode()), limit=WAIT)
                match = MARKER.search(vm.console.text())
                assert match, vm.console.text()[-2000:]
                return int(match.group(1)), str(uid)
            await asyncio.sleep(0.1)

    return await asyncio.wait_for(booted(), WAIT)


@pytest.mark.guest
async def test_data_written_by_the_guest_survives_a_restart(
    stack: tuple[EmbeddedStore, NodeAgent], tiny_guest: TinyGuest
) -> None:
    store, agent = stack
    await store.create(VIRTUALMACHINE, guest_vm(tiny_guest))
    await printable(store, "Running")
    first, uid = await marker_count(agent)
    assert first == 1
    # `diskplane restart`: the VMI goes, the VM (runStrategy Always) makes a new one.
    await store.delete(VIRTUALMACHINEINSTANCE, "default", "tiny")
    second, _ = await marker_count(agent, since_uid=uid)
    assert second == 2  # the DataVolume kept what the first boot wrote


@pytest.mark.guest
async def test_rerun_on_failure_boots_again_after_qemu_crashes(
    stack: tuple[EmbeddedStore, NodeAgent], tiny_guest: TinyGuest
) -> None:
    store, agent = stack
    spec = guest_vm(tiny_guest)
    spec["spec"]["runStrategy"] = "RerunOnFailure"
    await store.create(VIRTUALMACHINE, spec)
    first, uid = await marker_count(agent)
    assert first == 1
    identity = agent.get("default", "tiny").identity
    assert identity is not None
    os.kill(identity.pid, signal.SIGKILL)  # a crash, not a guest poweroff
    second, _ = await marker_count(agent, since_uid=uid)
    assert second == 2  # a new VMI on the same DataVolume
    await printable(store, "Running")  # and a good run ends the crash loop
