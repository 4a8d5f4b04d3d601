"""VirtualMachineInstance -> scheduled onto a node agent -> a guest there -> status mirrored.

The reconciler talks to node agents over HTTP only (:class:`virtnode.AgentClient`).
An unscheduled VMI gets the registered agent with the most free memory
(:class:`controllers.nodes.NodeDirectory`), recorded in ``status.nodeName``;
none fitting leaves it ``Pending`` with ``PodScheduled=False/Unschedulable``
and retried. Each agent's event stream (``controllers.nodes.forward_agent_events``)
says which VMI changed; the reconciler reads the agent's view and patches the
VMI's status with it. Deleting a VMI stops its guest gracefully first (finalizer).
"""

from __future__ import annotations

import logging
from typing import Any

from controllers.api.common import now_rfc3339
from controllers.api.kinds import VIRTUALMACHINEINSTANCE
from controllers.api.virtualmachine import PrintableStatus, VMIPhase
from controllers.errors import NotFound
from controllers.nodes import NodeDirectory, NodeInfo
from controllers.reconcile.controller import Result
from controllers.reconcile.events import EventKind, EventRecorder
from controllers.reconcilers.importer import Key
from controllers.store.protocol import Object, Store
from virtnode import AgentClient, AgentUnavailableError, VirtnodeError, VmNotFoundError

log = logging.getLogger(__name__)

FINALIZER = "diskplane.io/virtualmachineinstance"
# `diskplane pause|unpause` set this annotation; the reconciler makes the guest match it.
PAUSE_ANNOTATION = "diskplane.io/paused"
# How often an unschedulable VMI looks for room again.
UNSCHEDULABLE_RETRY_S = 5.0
# Status fields the agent reports that the VMI keeps (nodeName is the scheduler's).
MIRRORED = (
    "phase",
    "printableStatus",
    "conditions",
    "reason",
    "accelerator",
    "qemu",
    "volumeStatus",
    "interfaces",
    "phaseTransitionTimestamps",
)


class VirtualMachineInstanceReconciler:
    def __init__(self, store: Store, nodes: NodeDirectory, recorder: EventRecorder) -> None:
        self.store, self.nodes, self.recorder = store, nodes, recorder

    async def reconcile(self, key: Key) -> Result:
        try:
            vmi = await self.store.get(VIRTUALMACHINEINSTANCE, *key)
        except NotFound:
            return Result()
        md = vmi["metadata"]
        if md.get("deletionTimestamp"):
            await self._stop(vmi, key)
            if FINALIZER in (md.get("finalizers") or []):
                md["finalizers"] = [f for f in md["finalizers"] if f != FINALIZER]
                await self.store.update(VIRTUALMACHINEINSTANCE, vmi)
            return Result()
        if FINALIZER not in (md.get("finalizers") or []):
            md["finalizers"] = [*(md.get("finalizers") or []), FINALIZER]
            vmi = await self.store.update(VIRTUALMACHINEINSTANCE, vmi)
        node = await self._node_of(vmi)
        if node is None:
            return Result(requeue_after=UNSCHEDULABLE_RETRY_S)
        status = await self._run(vmi, key, await self.nodes.client(node))
        if status is not None:
            await self._mirror(vmi, status)
        return Result()

    async def _node_of(self, vmi: Object) -> NodeInfo | None:
        """The node the VMI was placed on, or a new placement (patched into its status)."""
        status = vmi.get("status") or {}
        placed = status.get("nodeName")
        if placed:
            node = await self.nodes.get(placed)
            if node is None:
                log.warning("VMI %s: node %s is not registered", vmi["metadata"]["name"], placed)
            return node
        if status.get("phase") in (VMIPhase.SUCCEEDED, VMIPhase.FAILED):
            return None
        node = await self.nodes.schedule(vmi)
        md = vmi["metadata"]
        namespace = md.get("namespace") or "default"
        if node is None:
            message = "no registered node agent has enough free memory for this VMI"
            unschedulable = {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastTransitionTime": now_rfc3339(),
            }
            if status.get("phase") != "Pending":
                await self.recorder.record(vmi, EventKind.WARNING, "FailedScheduling", message)
                await self.store.patch_status(
                    VIRTUALMACHINEINSTANCE,
                    namespace,
                    md["name"],
                    {"phase": "Pending", "conditions": [unschedulable]},
                )
            return None
        patch = {"phase": "Scheduling", "nodeName": node.name, "conditions": []}
        vmi["status"] = {**status, **patch}
        await self.store.patch_status(VIRTUALMACHINEINSTANCE, namespace, md["name"], patch)
        message = f"VMI scheduled on node {node.name} ({node.free_memory} bytes free)"
        await self.recorder.record(vmi, EventKind.NORMAL, "Scheduled", message)
        return node

    async def _run(self, vmi: Object, key: Key, agent: AgentClient) -> dict[str, Any] | None:
        try:
            current = await agent.get(*key)
        except VmNotFoundError:
            pass
        else:
            await self._pause_as_asked(vmi, current, agent)
            return dict(current.get("status") or {})
        if (vmi.get("status") or {}).get("phase") in (VMIPhase.SUCCEEDED, VMIPhase.FAILED):
            return None  # it ran and ended; a VMI is never started twice
        try:
            created = await agent.create(_for_agent(vmi))
        except AgentUnavailableError:
            raise  # retried with backoff
        except VirtnodeError as exc:
            await self.recorder.record(vmi, EventKind.WARNING, "FailedCreate", str(exc))
            return {"phase": VMIPhase.FAILED.value, "reason": "FailedCreate"}
        node = (vmi.get("status") or {}).get("nodeName", "its node")
        await self.recorder.record(vmi, EventKind.NORMAL, "Created", f"VMI started on {node}")
        return dict(created.get("status") or {})

    async def _pause_as_asked(
        self, vmi: Object, current: dict[str, Any], agent: AgentClient
    ) -> None:
        annotations = vmi["metadata"].get("annotations") or {}
        wanted = annotations.get(PAUSE_ANNOTATION)
        status = current.get("status") or {}
        if wanted is None or status.get("phase") != VMIPhase.RUNNING:
            return
        paused = any(
            c.get("type") == "Paused" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        ns, name = vmi["metadata"].get("namespace") or "default", vmi["metadata"]["name"]
        if wanted == "true" and not paused:
            await agent.action(ns, name, "pause")
            await self.recorder.record(vmi, EventKind.NORMAL, "Paused", "VMI paused")
        elif wanted == "false" and paused:
            await agent.action(ns, name, "unpause")
            await self.recorder.record(vmi, EventKind.NORMAL, "Unpaused", "VMI unpaused")

    async def _stop(self, vmi: Object, key: Key) -> None:
        placed = (vmi.get("status") or {}).get("nodeName")
        node = await self.nodes.get(placed) if placed else None
        if node is None:
            return
        agent = await self.nodes.client(node)
        try:
            await agent.delete(*key)
        except VmNotFoundError:
            return

    async def _mirror(self, vmi: Object, status: dict[str, Any]) -> None:
        old = vmi.get("status") or {}
        new = _schema_clean({k: status[k] for k in MIRRORED if k in status})
        if all(old.get(k) == v for k, v in new.items()):
            return
        md = vmi["metadata"]
        await self.store.patch_status(
            VIRTUALMACHINEINSTANCE, md.get("namespace") or "default", md["name"], new
        )


def _schema_clean(status: dict[str, Any]) -> dict[str, Any]:
    """The agent's status as the CRD schema takes it on a real apiserver: a printableStatus
    outside KubeVirt's values (the agent's ``Failed``) is left out, and so are empty or null
    fields and condition strings (kube-apiserver 1.20 rejects them as null strings)."""
    clean = {k: v for k, v in status.items() if v is not None and v != ""}
    if clean.get("printableStatus") not in set(PrintableStatus):
        clean.pop("printableStatus", None)
    if "conditions" in clean:
        clean["conditions"] = [
            {k: v for k, v in c.items() if v != ""} for c in clean["conditions"] or []
        ]
    return clean


def _for_agent(vmi: Object) -> dict[str, Any]:
    """The VMI as the agent takes it: metadata and spec (status is the agent's to report)."""
    return {k: v for k, v in vmi.items() if k != "status"}
