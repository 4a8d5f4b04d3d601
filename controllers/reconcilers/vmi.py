"""VirtualMachineInstance -> a guest on the node agent -> status mirrored back.

Embedded mode runs the agent in this process (:class:`virtnode.NodeAgent`).
The agent's event bus tells which VMI changed; the reconciler reads the
agent's view and patches the VMI's status with it. Deleting a VMI stops its
guest gracefully first (finalizer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from controllers.api.kinds import VIRTUALMACHINEINSTANCE
from controllers.api.virtualmachine import VMIPhase
from controllers.errors import NotFound
from controllers.reconcile.controller import Result
from controllers.reconcile.events import EventKind, EventRecorder
from controllers.reconcilers.importer import Key
from controllers.store.protocol import Object, Store
from virtnode import NodeAgent, VirtnodeError, VmNotFoundError

log = logging.getLogger(__name__)

FINALIZER = "diskplane.io/virtualmachineinstance"
# `diskplane pause|unpause` set this annotation; the reconciler makes the guest match it.
PAUSE_ANNOTATION = "diskplane.io/paused"
# Status fields the agent reports that the VMI keeps.
MIRRORED = (
    "phase",
    "printableStatus",
    "conditions",
    "nodeName",
    "reason",
    "accelerator",
    "qemu",
    "volumeStatus",
    "phaseTransitionTimestamps",
)


class VirtualMachineInstanceReconciler:
    def __init__(self, store: Store, agent: NodeAgent, recorder: EventRecorder) -> None:
        self.store, self.agent, self.recorder = store, agent, recorder

    async def reconcile(self, key: Key) -> Result:
        try:
            vmi = await self.store.get(VIRTUALMACHINEINSTANCE, *key)
        except NotFound:
            return Result()
        md = vmi["metadata"]
        if md.get("deletionTimestamp"):
            await self._stop(key)
            if FINALIZER in (md.get("finalizers") or []):
                md["finalizers"] = [f for f in md["finalizers"] if f != FINALIZER]
                await self.store.update(VIRTUALMACHINEINSTANCE, vmi)
            return Result()
        if FINALIZER not in (md.get("finalizers") or []):
            md["finalizers"] = [*(md.get("finalizers") or []), FINALIZER]
            vmi = await self.store.update(VIRTUALMACHINEINSTANCE, vmi)
        status = await self._run(vmi, key)
        if status is not None:
            await self._mirror(vmi, status)
        return Result()

    async def _run(self, vmi: Object, key: Key) -> dict[str, Any] | None:
        try:
            vm = self.agent.get(*key)
        except VmNotFoundError:
            pass
        else:
            await self._pause_as_asked(vmi, vm)
            return dict(vm.status())
        if (vmi.get("status") or {}).get("phase") in (VMIPhase.SUCCEEDED, VMIPhase.FAILED):
            return None  # it ran and ended; a VMI is never started twice
        try:
            vm = await self.agent.create(vmi)
        except VirtnodeError as exc:
            await self.recorder.record(vmi, EventKind.WARNING, "FailedCreate", str(exc))
            return {"phase": VMIPhase.FAILED.value, "reason": "FailedCreate"}
        node = vm.status().get("nodeName", "this node")
        await self.recorder.record(vmi, EventKind.NORMAL, "Created", f"VMI started on {node}")
        return dict(vm.status())

    async def _pause_as_asked(self, vmi: Object, vm: Any) -> None:
        annotations = vmi["metadata"].get("annotations") or {}
        wanted = annotations.get(PAUSE_ANNOTATION)
        if wanted is None or vm.status().get("phase") != VMIPhase.RUNNING:
            return
        if wanted == "true" and not vm.paused:
            await vm.pause()
            await self.recorder.record(vmi, EventKind.NORMAL, "Paused", "VMI paused")
        elif wanted == "false" and vm.paused:
            await vm.unpause()
            await self.recorder.record(vmi, EventKind.NORMAL, "Unpaused", "VMI unpaused")

    async def _stop(self, key: Key) -> None:
        try:
            await self.agent.delete(*key)
        except VmNotFoundError:
            return

    async def _mirror(self, vmi: Object, status: dict[str, Any]) -> None:
        old = vmi.get("status") or {}
        new = {k: status[k] for k in MIRRORED if k in status}
        if all(old.get(k) == v for k, v in new.items()):
            return
        md = vmi["metadata"]
        await self.store.patch_status(
            VIRTUALMACHINEINSTANCE, md.get("namespace") or "default", md["name"], new
        )


async def forward_agent_events(agent: NodeAgent, enqueue: Callable[[Key], None]) -> None:
    """Run until cancelled: every agent event about a VMI queues that VMI's key."""
    subscription = agent.events.subscribe()
    try:
        while True:
            event = await subscription.get()
            if event is None:
                return
            target = str(event.get("vmi", ""))
            if "/" in target:
                namespace, name = target.split("/", 1)
                enqueue((namespace, name))
    finally:
        subscription.close()
