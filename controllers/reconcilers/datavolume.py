"""DataVolume -> volume of the requested size -> import job -> CDI-shaped status.

Level-triggered and idempotent: every reconcile reads the DataVolume and the
importer's view of its job and writes the status that follows from them.
A finalizer makes deletion cancel the job and remove the volume first.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from controllers.api.common import ConditionStatus, now_rfc3339, parse_quantity
from controllers.api.datavolume import DataVolumeConditionType as Cond
from controllers.api.datavolume import DataVolumePhase as Phase
from controllers.api.kinds import DATAVOLUME, SECRET
from controllers.errors import NotFound
from controllers.reconcile.controller import Result
from controllers.reconcile.events import EventKind, EventRecorder
from controllers.reconcilers.claims import ensure_claim, owned_by
from controllers.reconcilers.importer import Importer, ImportJob, ImportState, ImportStatus, Key
from controllers.store.protocol import Object, Store

FINALIZER = "diskplane.io/datavolume"
# How long to wait before looking again at a claim some other owner holds.
CLAIM_RECHECK_S = 30.0
# CDI's default filesystem overhead for `spec.storage` requests on Filesystem volumes.
FILESYSTEM_OVERHEAD = 0.06
MiB = 1 << 20

_PHASES = {
    ImportState.SCHEDULED: Phase.IMPORT_SCHEDULED,
    ImportState.UPLOAD_READY: Phase.UPLOAD_READY,
    ImportState.RUNNING: Phase.IMPORT_IN_PROGRESS,
    ImportState.SUCCEEDED: Phase.SUCCEEDED,
    ImportState.FAILED: Phase.FAILED,
}


def requested_size(spec: dict[str, Any], overhead: float = FILESYSTEM_OVERHEAD) -> int:
    """Bytes to provision: ``storage`` requests grow by the filesystem overhead as CDI's
    ``GetRequiredSpace`` does (ceil(roundUp(size, 1 MiB) * (1 + overhead))); ``pvc`` does not."""
    claim = spec.get("storage") or spec.get("pvc") or {}
    size = parse_quantity(((claim.get("resources") or {}).get("requests") or {}).get("storage", 0))
    if size <= 0:
        raise ValueError("spec.storage.resources.requests.storage must be a positive size")
    if "storage" in spec and claim.get("volumeMode") != "Block":
        return math.ceil(math.ceil(size / MiB) * MiB * (1 + overhead))
    return size


def secret_data(secret: Object) -> dict[str, str]:
    """A Secret's ``data`` (base64) and ``stringData`` as plain strings."""
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    values.update(secret.get("stringData") or {})
    return values


def set_condition(
    conditions: list[dict[str, Any]], type_: str, status: str, reason: str = "", message: str = ""
) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set; lastTransitionTime moves only when status changes.

    Empty reason/message are left out: kube-apiserver 1.20 turns ``""`` inside a
    merge-patched list into null and then rejects it as not a string.
    """
    now = now_rfc3339()
    old = next((c for c in conditions if c.get("type") == type_), {})
    changed = old.get("status") != status
    entry: dict[str, Any] = {
        "type": type_,
        "status": status,
        "lastTransitionTime": now if changed else old.get("lastTransitionTime", now),
        "lastHeartbeatTime": now,
    }
    if reason:
        entry["reason"] = reason
    if message:
        entry["message"] = message
    if not changed and all(old.get(k) == entry.get(k) for k in ("reason", "message")):
        entry["lastHeartbeatTime"] = old.get("lastHeartbeatTime", now)
    return [c for c in conditions if c.get("type") != type_] + [entry]


class DataVolumeReconciler:
    def __init__(
        self,
        store: Store,
        importer: Importer,
        recorder: EventRecorder,
        *,
        bind_claims_locally: bool = True,
    ) -> None:
        self.store, self.importer, self.recorder = store, importer, recorder
        self.bind_claims_locally = bind_claims_locally

    async def reconcile(self, key: Key) -> Result:
        try:
            dv = await self.store.get(DATAVOLUME, *key)
        except NotFound:
            return Result()
        md = dv["metadata"]
        if md.get("deletionTimestamp"):
            await self._finalize(dv)
            return Result()
        if FINALIZER not in (md.get("finalizers") or []):
            md["finalizers"] = [*(md.get("finalizers") or []), FINALIZER]
            dv = await self.store.update(DATAVOLUME, dv)
        status = dv.get("status") or {}
        if status.get("phase") in (Phase.SUCCEEDED, Phase.FAILED):
            return Result()
        size = requested_size(dv["spec"])
        claim = await ensure_claim(self.store, dv, size, self.bind_claims_locally)
        if not owned_by(claim, dv):
            await self.recorder.record(
                dv,
                EventKind.WARNING,
                "ErrResourceExists",
                f'Resource "{md["name"]}" already exists and is not managed by DataVolume',
            )
            return Result(requeue_after=CLAIM_RECHECK_S)
        bound = (claim.get("status") or {}).get("phase") == "Bound"
        source = dv["spec"].get("source") or {}
        job = ImportJob(
            namespace=md.get("namespace") or "default",
            name=md["name"],
            uid=md["uid"],
            size=size,
            source=source,
            preallocation=bool(dv["spec"].get("preallocation", False)),
            credentials=await self._credentials(md.get("namespace") or "default", source),
        )
        state = await self.importer.ensure(job)
        phase = _PHASES[state.state]
        if "upload" in source and state.state == ImportState.SCHEDULED:
            phase = Phase.UPLOAD_READY  # CDI: the upload target waits for bytes
        await self._publish(dv, phase, state, bound)
        return Result()

    async def _credentials(self, namespace: str, source: dict[str, Any]) -> dict[str, str] | None:
        """The ``secretRef`` Secret's keys; a missing Secret fails the reconcile (retried)."""
        body = next(iter(source.values()), None) or {}
        name = body.get("secretRef") if isinstance(body, dict) else None
        if not name:
            return None
        secret = await self.store.get(SECRET, namespace, name)
        return secret_data(secret)

    async def _finalize(self, dv: Object) -> None:
        md = dv["metadata"]
        await self.importer.cancel(md.get("namespace") or "default", md["name"])
        if FINALIZER in (md.get("finalizers") or []):
            md["finalizers"] = [f for f in md["finalizers"] if f != FINALIZER]
            await self.store.update(DATAVOLUME, dv)

    def _status(self, dv: Object, phase: Phase, state: ImportStatus, bound: bool) -> dict[str, Any]:
        name = dv["metadata"]["name"]
        old = dv.get("status") or {}
        conditions = list(old.get("conditions") or [])
        claim = (
            (ConditionStatus.TRUE, "Bound", f"PVC {name} Bound")
            if bound
            else (ConditionStatus.FALSE, "Pending", f"PVC {name} Pending")
        )
        conditions = set_condition(conditions, Cond.BOUND, *claim)
        if phase == Phase.SUCCEEDED:
            running = (ConditionStatus.FALSE, "Completed", "Import Complete")
            ready = (ConditionStatus.TRUE, "", "")
        elif phase == Phase.FAILED:
            running = (ConditionStatus.FALSE, state.reason or "Error", state.message)
            ready = (ConditionStatus.FALSE, state.reason or "Error", state.message)
        elif phase == Phase.IMPORT_IN_PROGRESS:
            running = (ConditionStatus.TRUE, "Pod is running", state.message)
            ready = (ConditionStatus.FALSE, "TransferRunning", "")
        else:
            running = (ConditionStatus.FALSE, str(phase), "")
            ready = (ConditionStatus.FALSE, str(phase), "")
        conditions = set_condition(conditions, Cond.RUNNING, *running)
        conditions = set_condition(conditions, Cond.READY, *ready)
        return {
            "phase": str(phase),
            "progress": state.progress,
            "restartCount": state.restarts,
            "claimName": name,
            "conditions": conditions,
        }

    async def _publish(self, dv: Object, phase: Phase, state: ImportStatus, bound: bool) -> None:
        old = dv.get("status") or {}
        new = self._status(dv, phase, state, bound)
        if _same(old, new):
            return
        md = dv["metadata"]
        await self.store.patch_status(DATAVOLUME, md.get("namespace") or "default", md["name"], new)
        if old.get("phase") != new["phase"]:
            await self._event(dv, phase, state)

    async def _event(self, dv: Object, phase: Phase, state: ImportStatus) -> None:
        name = dv["metadata"]["name"]
        events = {
            Phase.IMPORT_SCHEDULED: (
                EventKind.NORMAL,
                "ImportScheduled",
                f"Import into {name} scheduled",
            ),
            Phase.IMPORT_IN_PROGRESS: (
                EventKind.NORMAL,
                "ImportInProgress",
                f"Import into {name} in progress",
            ),
            Phase.SUCCEEDED: (
                EventKind.NORMAL,
                "ImportSucceeded",
                f"Successfully imported into PVC {name}",
            ),
            Phase.FAILED: (
                EventKind.WARNING,
                "ImportFailed",
                f"Failed to import into PVC {name}: {state.message}",
            ),
            Phase.UPLOAD_READY: (EventKind.NORMAL, "UploadReady", f"Upload into {name} ready"),
        }
        if phase in events:
            await self.recorder.record(dv, *events[phase])


def _same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Equal apart from condition heartbeat times."""

    def strip(status: dict[str, Any]) -> dict[str, Any]:
        conds = [
            {k: v for k, v in c.items() if k != "lastHeartbeatTime"}
            for c in status.get("conditions") or []
        ]
        return {**status, "conditions": sorted(conds, key=lambda c: str(c.get("type")))}

    return strip(old) == strip(new)
