"""Recording Kubernetes Events (core/v1) about the objects controllers act on.

Repeats of the same reason and message on one object bump ``count`` and
``lastTimestamp`` of one Event, as kubectl shows them. Recording is best
effort: a failure is logged and never fails a reconcile.
"""

from __future__ import annotations

import hashlib
import logging
from enum import StrEnum

from controllers.api.common import now_rfc3339
from controllers.api.kinds import EVENT
from controllers.errors import Conflict, NotFound, StoreError
from controllers.store.protocol import Object, Store

log = logging.getLogger(__name__)

COMPONENT = "diskplane-controllers"


class EventKind(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class EventRecorder:
    def __init__(self, store: Store, component: str = COMPONENT) -> None:
        self.store, self.component = store, component

    async def record(self, obj: Object, kind: EventKind, reason: str, message: str) -> None:
        md = obj.get("metadata", {})
        namespace = md.get("namespace") or "default"
        digest = hashlib.sha256(f"{md.get('uid')}/{reason}/{message}".encode()).hexdigest()[:12]
        name = f"{md.get('name')}.{digest}"
        now = now_rfc3339()
        try:
            try:
                event = await self.store.get(EVENT, namespace, name)
            except NotFound:
                await self.store.create(EVENT, self._new(obj, name, kind, reason, message, now))
                return
            event["count"] = int(event.get("count") or 1) + 1
            event["lastTimestamp"] = now
            await self.store.update(EVENT, event)
        except (Conflict, StoreError) as exc:
            log.warning(
                "event %s on %s/%s not recorded: %s", reason, namespace, md.get("name"), exc
            )

    def _new(
        self, obj: Object, name: str, kind: EventKind, reason: str, message: str, now: str
    ) -> Object:
        md = obj.get("metadata", {})
        return {
            "metadata": {"name": name, "namespace": md.get("namespace") or "default"},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": md.get("name"),
                "namespace": md.get("namespace") or "default",
                "uid": md.get("uid"),
                "resourceVersion": md.get("resourceVersion"),
            },
            "type": kind.value,
            "reason": reason,
            "message": message,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": self.component},
            "reportingComponent": self.component,
        }
