"""The level-triggered controller loop: watch -> work queue -> reconcile, with retries.

A :class:`Controller` lists and watches its primary kind (and any kinds it
owns, mapped to their controlling owner), queues ``(namespace, name)`` keys,
and runs ``workers`` tasks that call ``reconciler.reconcile(key)``. A
reconcile reads the current state and makes it right (idempotent); an
exception retries the key with per-key exponential backoff, a
``Result(requeue_after=...)`` re-checks it later, anything else forgets it.
Outside triggers (an import's progress) call :meth:`Controller.enqueue`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from controllers.api.kinds import ResourceKind
from controllers.reconcile.workqueue import ShutDown, WorkQueue
from controllers.store.protocol import Object, Store
from controllers.store.reflector import Key, Reflector, object_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    """What a reconcile asks for next: nothing, or another look after ``requeue_after`` s."""

    requeue_after: float | None = None


class Reconciler(Protocol):
    async def reconcile(self, key: Key) -> Result: ...


def controller_owner(obj: Object, kind: ResourceKind) -> Key | None:
    """The key of ``obj``'s controlling owner of ``kind``, if it has one."""
    md = obj.get("metadata", {})
    for ref in md.get("ownerReferences") or []:
        if ref.get("kind") == kind.kind and ref.get("controller"):
            return str(md.get("namespace", "")), str(ref.get("name", ""))
    return None


class Controller:
    def __init__(
        self,
        name: str,
        store: Store,
        kind: ResourceKind,
        reconciler: Reconciler,
        *,
        owns: Sequence[ResourceKind] = (),
        workers: int = 2,
        queue: WorkQueue[Key] | None = None,
    ) -> None:
        self.name, self.store, self.kind, self.reconciler = name, store, kind, reconciler
        self.owns, self.workers = tuple(owns), workers
        self.queue: WorkQueue[Key] = queue or WorkQueue()
        self.reconciles = 0
        self.failures = 0

    def enqueue(self, key: Key) -> None:
        self.queue.add(key)

    async def run(self) -> None:
        """Run until cancelled; every task it starts is named and ends with it."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._watch(self.kind, None), name=f"{self.name}-watch")
                for owned in self.owns:
                    group.create_task(
                        self._watch(owned, self.kind), name=f"{self.name}-watch-{owned.plural}"
                    )
                for index in range(self.workers):
                    group.create_task(self._worker(), name=f"{self.name}-worker-{index}")
        finally:
            self.queue.shutdown()

    async def _watch(self, kind: ResourceKind, owner: ResourceKind | None) -> None:
        async for event in Reflector(self.store, kind).events():
            key = (
                object_key(event.object) if owner is None else controller_owner(event.object, owner)
            )
            if key is not None:
                self.queue.add(key)

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            try:
                result = await self.reconciler.reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                delay = self.queue.add_rate_limited(key)
                log.warning(
                    "%s: reconciling %s/%s failed (retry in %.2f s): %s",
                    self.name,
                    key[0],
                    key[1],
                    delay,
                    exc,
                )
            else:
                self.queue.forget(key)
                if result.requeue_after is not None:
                    self.queue.add_after(key, result.requeue_after)
            finally:
                self.reconciles += 1
                self.queue.done(key)
