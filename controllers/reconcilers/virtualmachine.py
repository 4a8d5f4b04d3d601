"""VirtualMachine -> owned DataVolumes from ``dataVolumeTemplates`` -> a VMI per
``runStrategy`` -> KubeVirt's ``printableStatus``.

The VMI itself is run by the VMI reconciler and the node agent; this
reconciler only decides whether one should exist and reads its phase back.
A VMI is created once every DataVolume the template uses has Succeeded.
"""

from __future__ import annotations

import copy
import datetime
from typing import Any

from controllers.api.common import ConditionStatus, parse_time
from controllers.api.datavolume import DataVolumePhase
from controllers.api.kinds import DATAVOLUME, VIRTUALMACHINE, VIRTUALMACHINEINSTANCE
from controllers.api.virtualmachine import PrintableStatus as PS
from controllers.api.virtualmachine import RunStrategy, VMIPhase
from controllers.errors import AlreadyExists, NotFound
from controllers.reconcile.controller import Result
from controllers.reconcile.events import EventKind, EventRecorder
from controllers.reconcilers.datavolume import set_condition
from controllers.reconcilers.importer import Key
from controllers.store.protocol import Object, Store

_FINISHED = {VMIPhase.SUCCEEDED, VMIPhase.FAILED}
# Crash-loop backoff of a VM whose VMI keeps failing: 10 s, 20 s, ... at most 5 min.
CRASH_BACKOFF_BASE_S = 10.0
CRASH_BACKOFF_MAX_S = 300.0


def run_strategy(vm: Object) -> RunStrategy:
    spec = vm.get("spec") or {}
    if spec.get("runStrategy"):
        return RunStrategy(spec["runStrategy"])
    return RunStrategy.ALWAYS if spec.get("running") else RunStrategy.HALTED


def owner_ref(vm: Object) -> dict[str, Any]:
    md = vm["metadata"]
    return {
        "apiVersion": VIRTUALMACHINE.api_version,
        "kind": VIRTUALMACHINE.kind,
        "name": md["name"],
        "uid": md["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def datavolume_names(vm: Object) -> list[str]:
    volumes = ((vm["spec"].get("template") or {}).get("spec") or {}).get("volumes") or []
    names = [v["dataVolume"]["name"] for v in volumes if v.get("dataVolume")]
    return names


class VirtualMachineReconciler:
    def __init__(
        self,
        store: Store,
        recorder: EventRecorder,
        *,
        crash_backoff_s: tuple[float, float] = (CRASH_BACKOFF_BASE_S, CRASH_BACKOFF_MAX_S),
    ) -> None:
        self.store, self.recorder = store, recorder
        self.crash_backoff_s = crash_backoff_s

    async def reconcile(self, key: Key) -> Result:
        try:
            vm = await self.store.get(VIRTUALMACHINE, *key)
        except NotFound:
            return Result()
        if vm["metadata"].get("deletionTimestamp"):
            return Result()  # owned DVs and the VMI go by garbage collection
        namespace = key[0]
        await self._ensure_datavolumes(vm, namespace)
        dvs = await self._datavolumes(vm, namespace)
        vmi = await self._vmi(namespace, key[1])
        vmi, wait = await self._converge(vm, vmi, dvs)
        await self._publish(vm, vmi, dvs)
        return Result(requeue_after=wait)

    async def _ensure_datavolumes(self, vm: Object, namespace: str) -> None:
        for template in vm["spec"].get("dataVolumeTemplates") or []:
            md = copy.deepcopy(template.get("metadata") or {})
            md.update(namespace=namespace, ownerReferences=[owner_ref(vm)])
            try:
                await self.store.create(DATAVOLUME, {"metadata": md, "spec": template["spec"]})
            except AlreadyExists:
                continue

    async def _datavolumes(self, vm: Object, namespace: str) -> dict[str, Object | None]:
        found: dict[str, Object | None] = {}
        for name in datavolume_names(vm):
            try:
                found[name] = await self.store.get(DATAVOLUME, namespace, name)
            except NotFound:
                found[name] = None
        return found

    async def _vmi(self, namespace: str, name: str) -> Object | None:
        try:
            return await self.store.get(VIRTUALMACHINEINSTANCE, namespace, name)
        except NotFound:
            return None

    async def _converge(
        self, vm: Object, vmi: Object | None, dvs: dict[str, Object | None]
    ) -> tuple[Object | None, float | None]:
        """Create or delete the VMI; return it and how long a crash-loop backoff waits."""
        strategy = run_strategy(vm)
        phase = (vmi or {}).get("status", {}).get("phase", "")
        deleting = bool(vmi and vmi["metadata"].get("deletionTimestamp"))
        if vmi is not None and not deleting:
            failed = phase == VMIPhase.FAILED
            should_stop = strategy == RunStrategy.HALTED or (
                phase in _FINISHED
                and (
                    strategy == RunStrategy.ALWAYS
                    or (strategy == RunStrategy.RERUN_ON_FAILURE and failed)
                )
            )
            if should_stop:
                if failed and strategy != RunStrategy.HALTED:
                    vm = await self._note_failure(vm, vmi)
                await self.store.delete(VIRTUALMACHINEINSTANCE, *_key(vmi))
                return await self._vmi(*_key(vmi)), None
            return vmi, None
        wants = strategy in (RunStrategy.ALWAYS, RunStrategy.RERUN_ON_FAILURE) or (
            strategy == RunStrategy.ONCE and not (vm.get("status") or {}).get("created")
        )
        ready = all(
            dv is not None and (dv.get("status") or {}).get("phase") == DataVolumePhase.SUCCEEDED
            for dv in dvs.values()
        )
        wait = backoff_remaining(vm)
        if vmi is None and wants and ready and wait is None:
            return await self._create_vmi(vm), None
        return vmi, wait

    async def _note_failure(self, vm: Object, vmi: Object) -> Object:
        """Count a failed run and set when the next may start (KubeVirt's startFailure)."""
        failure = (vm.get("status") or {}).get("startFailure") or {}
        count = int(failure.get("consecutiveFailCount", 0)) + 1
        base, cap = self.crash_backoff_s
        delay = min(base * 2 ** (count - 1), cap)
        retry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=delay)
        await self.recorder.record(
            vm,
            EventKind.WARNING,
            "FailedRun",
            f"VMI {vmi['metadata']['name']} failed; "
            f"restarting in {delay:.0f} s ({count} failure(s) in a row)",
        )
        return await self.store.patch_status(
            VIRTUALMACHINE,
            *_key(vm),
            {
                "startFailure": {
                    "consecutiveFailCount": count,
                    "lastFailedVMIUID": vmi["metadata"]["uid"],
                    "retryAfterTimestamp": retry.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            },
        )

    async def _create_vmi(self, vm: Object) -> Object:
        template = vm["spec"]["template"]
        md = copy.deepcopy(template.get("metadata") or {})
        md.update(
            name=vm["metadata"]["name"],
            namespace=vm["metadata"].get("namespace") or "default",
            ownerReferences=[owner_ref(vm)],
        )
        try:
            vmi = await self.store.create(
                VIRTUALMACHINEINSTANCE, {"metadata": md, "spec": copy.deepcopy(template["spec"])}
            )
        except AlreadyExists:
            return await self.store.get(VIRTUALMACHINEINSTANCE, *_key(vm))
        await self.recorder.record(
            vm,
            EventKind.NORMAL,
            "SuccessfulCreate",
            f"Started the virtual machine by creating the new virtual machine instance "
            f"{md['name']}",
        )
        return vmi

    async def _publish(self, vm: Object, vmi: Object | None, dvs: dict[str, Object | None]) -> None:
        printable = printable_status(vm, vmi, dvs)
        vmi_ready = _condition(vmi, "Ready")
        old = vm.get("status") or {}
        ready = vmi_ready == ConditionStatus.TRUE
        conditions = set_condition(
            list(old.get("conditions") or []),
            "Ready",
            ConditionStatus.TRUE if ready else ConditionStatus.FALSE,
            "" if ready else ("VMINotExists" if vmi is None else "VMINotReady"),
        )
        new = {
            "printableStatus": str(printable),
            "ready": ready,
            "created": bool(old.get("created")) or vmi is not None,
            "runStrategy": str(run_strategy(vm)),
            "observedGeneration": vm["metadata"].get("generation", 1),
            "conditions": conditions,
        }
        if old.get("startFailure") and (vmi or {}).get("status", {}).get("phase") == "Running":
            new["startFailure"] = None  # a run that got going ends the crash loop
        if _strip(old) != _strip(new):
            await self.store.patch_status(VIRTUALMACHINE, *_key(vm), new)


def backoff_remaining(vm: Object) -> float | None:
    """Seconds until a crash-looping VM may start again, or None."""
    failure = (vm.get("status") or {}).get("startFailure") or {}
    retry = failure.get("retryAfterTimestamp")
    if not retry:
        return None
    left = (parse_time(retry) - datetime.datetime.now(datetime.UTC)).total_seconds()
    return left if left > 0 else None


def printable_status(vm: Object, vmi: Object | None, dvs: dict[str, Object | None]) -> PS:
    """KubeVirt's printableStatus from the VM, its VMI and its DataVolumes."""
    if vm["metadata"].get("deletionTimestamp"):
        return PS.TERMINATING
    if vmi is None and backoff_remaining(vm) is not None:
        return PS.CRASH_LOOP_BACK_OFF
    phases = [(dv or {}).get("status", {}).get("phase") for dv in dvs.values()]
    if vmi is None or not vmi.get("status"):
        if any(p == DataVolumePhase.FAILED for p in phases):
            return PS.DATA_VOLUME_ERROR
        if any(dv is None for dv in dvs.values()) and run_strategy(vm) != RunStrategy.HALTED:
            return (
                PS.ERROR_PVC_NOT_FOUND
                if not vm["spec"].get("dataVolumeTemplates")
                else PS.PROVISIONING
            )
        if any(p != DataVolumePhase.SUCCEEDED for p in phases):
            pending = {DataVolumePhase.PENDING, DataVolumePhase.UNSET, None}
            return (
                PS.WAITING_FOR_VOLUME_BINDING
                if all(p in pending for p in phases)
                else PS.PROVISIONING
            )
        return PS.STARTING if vmi is not None else PS.STOPPED
    if vmi["metadata"].get("deletionTimestamp"):
        return PS.STOPPING
    phase = vmi["status"].get("phase", "")
    if phase == VMIPhase.RUNNING:
        return PS.PAUSED if _condition(vmi, "Paused") == ConditionStatus.TRUE else PS.RUNNING
    if phase in _FINISHED:
        return PS.STOPPED
    if _condition(vmi, "PodScheduled") == ConditionStatus.FALSE:
        return PS.ERROR_UNSCHEDULABLE  # no node agent has room (controllers.nodes)
    return PS.STARTING


def _condition(obj: Object | None, type_: str) -> str | None:
    for condition in ((obj or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_:
            return str(condition.get("status"))
    return None


def _key(obj: Object) -> tuple[str, str]:
    md = obj["metadata"]
    return md.get("namespace") or "default", md["name"]


def _strip(status: dict[str, Any]) -> dict[str, Any]:
    conds = [
        {k: v for k, v in c.items() if k not in ("lastHeartbeatTime", "lastTransitionTime")}
        for c in status.get("conditions") or []
    ]
    return {**status, "conditions": conds}
