"""VMIs go to the registered node agent with the most free memory, over HTTP.

Two real node agents serve on 127.0.0.1; the VMIs here ask for a volume that
does not exist, so each agent refuses them at once (no guest boots) after the
scheduler has chosen it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controllers.api import EVENT, VIRTUALMACHINEINSTANCE
from controllers.nodes import (
    NODE,
    NodeDirectory,
    VmiNotPlaced,
    agent_url_for,
    forward_agent_events,
    register_node,
)
from controllers.reconcile import Controller, EventRecorder
from controllers.reconcilers import printable_status
from controllers.reconcilers.vmi import VirtualMachineInstanceReconciler
from controllers.store import EmbeddedStore
from controllers.up import serving
from virtnode import AccelInfo, AgentSettings, NodeAgent
from virtnode.api import create_app

WAIT = 30.0
GiB = 1 << 30


def vmi(name: str, memory: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "domain": {
                "memory": {"guest": memory},
                "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
            },
            "volumes": [{"name": "root", "persistentVolumeClaim": {"claimName": "absent"}}],
        },
    }


@contextlib.asynccontextmanager
async def agent_on(root: Path, node: str) -> AsyncIterator[str]:
    accel = AccelInfo("tcg", "test", ("-accel", "tcg"))
    agent = NodeAgent(AgentSettings(data_dir=root / node, node_name=node), accel=accel)
    async with serving(create_app(agent), "127.0.0.1:0") as url:
        yield url


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedStore, dict[str, str]]]:
    store = await EmbeddedStore.open(tmp_path / "store")
    nodes = NodeDirectory(store)
    controller = Controller(
        "vmi",
        store,
        VIRTUALMACHINEINSTANCE,
        VirtualMachineInstanceReconciler(store, nodes, EventRecorder(store)),
    )
    async with agent_on(tmp_path, "small") as small, agent_on(tmp_path, "big") as big:
        await register_node(store, "small", small, 1 * GiB)
        await register_node(store, "big", big, 4 * GiB)
        tasks = [
            asyncio.create_task(controller.run(), name="vmi-controller"),
            asyncio.create_task(forward_agent_events(small, controller.enqueue), name="ev-s"),
            asyncio.create_task(forward_agent_events(big, controller.enqueue), name="ev-b"),
        ]
        try:
            yield store, {"small": small, "big": big}
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await nodes.close()
            await store.close()


async def settled(store: EmbeddedStore, name: str, phase: str) -> dict[str, Any]:
    async def follow() -> dict[str, Any]:
        async for event in store.watch(VIRTUALMACHINEINSTANCE, "default"):
            obj = event.object
            if obj["metadata"]["name"] == name and (obj.get("status") or {}).get("phase") == phase:
                return obj
        raise AssertionError("watch ended")

    return await asyncio.wait_for(follow(), WAIT)


async def reasons(store: EmbeddedStore, name: str) -> list[str]:
    events = (await store.list(EVENT, "default")).items
    return [e["reason"] for e in events if e["involvedObject"]["name"] == name]


async def test_vmi_goes_to_the_agent_with_the_most_free_memory(
    cluster: tuple[EmbeddedStore, dict[str, str]],
) -> None:
    store, urls = cluster
    await store.create(VIRTUALMACHINEINSTANCE, vmi("first", "512Mi"))
    failed = await settled(store, "first", "Failed")  # the big agent refused the missing volume
    assert failed["status"]["nodeName"] == "big"
    assert await agent_url_for(store, "default", "first") == urls["big"]  # console: VMI -> agent
    assert failed["status"]["reason"] == "FailedCreate"
    assert sorted(await reasons(store, "first")) == ["FailedCreate", "Scheduled"]


async def test_vmi_fitting_only_the_small_node_after_big_goes_stale(
    cluster: tuple[EmbeddedStore, dict[str, str]],
) -> None:
    store, _ = cluster
    stale = {
        "conditions": [
            {"type": "Ready", "status": "True", "lastHeartbeatTime": "2020-01-01T00:00:00Z"}
        ]
    }
    await store.patch_status(NODE, "", "big", stale)
    await store.create(VIRTUALMACHINEINSTANCE, vmi("second", "256Mi"))
    failed = await settled(store, "second", "Failed")
    assert failed["status"]["nodeName"] == "small"


async def test_vmi_too_big_for_every_node_is_unschedulable(
    cluster: tuple[EmbeddedStore, dict[str, str]],
) -> None:
    store, _ = cluster
    await store.create(VIRTUALMACHINEINSTANCE, vmi("huge", "8Gi"))
    pending = await settled(store, "huge", "Pending")
    condition = pending["status"]["conditions"][0]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "PodScheduled",
        "False",
        "Unschedulable",
    )
    assert "nodeName" not in pending["status"]
    with pytest.raises(VmiNotPlaced, match="not scheduled"):
        await agent_url_for(store, "default", "huge")
    assert await reasons(store, "huge") == ["FailedScheduling"]


async def test_pending_placements_count_against_a_node(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path)
    try:
        await register_node(store, "a", "http://127.0.0.1:1", 4 * GiB)
        await register_node(store, "b", "http://127.0.0.1:2", 3 * GiB)
        placed = await store.create(VIRTUALMACHINEINSTANCE, vmi("placed", "2Gi"))
        await store.patch_status(
            VIRTUALMACHINEINSTANCE, "default", "placed", {"phase": "Scheduling", "nodeName": "a"}
        )
        new = await store.create(VIRTUALMACHINEINSTANCE, vmi("new", "1Gi"))
        chosen = await NodeDirectory(store).schedule(new)
        assert chosen is not None
        assert chosen.name == "b"  # a has 4 - 2 = 2 GiB left, b 3 GiB
        assert placed["metadata"]["uid"] != new["metadata"]["uid"]
    finally:
        await store.close()


def test_an_unschedulable_vmi_makes_its_vm_error_unschedulable() -> None:
    vm = {"metadata": {"name": "vm"}, "spec": {"runStrategy": "Always"}}
    unschedulable = {
        "metadata": {"name": "vm"},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
        },
    }
    assert printable_status(vm, unschedulable, {}) == "ErrorUnschedulable"
    scheduling = {"metadata": {"name": "vm"}, "status": {"phase": "Scheduling", "conditions": []}}
    assert printable_status(vm, scheduling, {}) == "Starting"
