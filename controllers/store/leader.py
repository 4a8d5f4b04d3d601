"""Leader election on a ``coordination.k8s.io/v1`` Lease, over any store.

Like client-go's leaderelection: the holder renews ``spec.renewTime`` every
``retry_period``; a candidate takes the lease once ``renewTime +
leaseDurationSeconds`` has passed. Every write is an optimistic update, so two
candidates racing for an expired lease cannot both win (one gets ``Conflict``).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass

from controllers.api.common import now_micro, parse_time
from controllers.api.kinds import LEASE
from controllers.errors import AlreadyExists, Conflict, NotFound, StoreError
from controllers.store.protocol import Object, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseTiming:
    """How long a lease lasts without renewal, and how often the holder renews."""

    lease_duration_s: int = 15
    retry_period_s: float = 2.0


class LeaderElector:
    def __init__(
        self,
        store: Store,
        name: str,
        identity: str,
        namespace: str = "default",
        timing: LeaseTiming | None = None,
    ) -> None:
        self.store, self.name, self.identity, self.namespace = store, name, identity, namespace
        self.timing = timing or LeaseTiming()
        self.is_leader = False

    async def try_acquire_or_renew(self) -> bool:
        """One round: take or renew the lease if we may; return whether we hold it."""
        try:
            lease = await self.store.get(LEASE, self.namespace, self.name)
        except NotFound:
            return await self._create()
        spec = lease.setdefault("spec", {})
        holder = spec.get("holderIdentity")
        if holder and holder != self.identity and not self._expired(spec):
            self.is_leader = False
            return False
        now = now_micro()
        if holder != self.identity:
            spec["leaseTransitions"] = int(spec.get("leaseTransitions", 0)) + 1
            spec["acquireTime"] = now
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=self.timing.lease_duration_s,
            renewTime=now,
        )
        try:
            await self.store.update(LEASE, lease)
        except Conflict:
            self.is_leader = False
            return False
        self.is_leader = True
        return True

    async def _create(self) -> bool:
        now = now_micro()
        lease: Object = {
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.timing.lease_duration_s,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        try:
            await self.store.create(LEASE, lease)
        except AlreadyExists:
            return False
        self.is_leader = True
        return True

    def _expired(self, spec: Object) -> bool:
        renewed = spec.get("renewTime")
        if not renewed:
            return True
        duration = datetime.timedelta(seconds=int(spec.get("leaseDurationSeconds") or 0))
        return parse_time(str(renewed)) + duration < datetime.datetime.now(datetime.UTC)

    async def release(self) -> None:
        """Give the lease up so another candidate need not wait for it to expire."""
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            lease = await self.store.get(LEASE, self.namespace, self.name)
            if lease.get("spec", {}).get("holderIdentity") == self.identity:
                lease["spec"].update(holderIdentity="", renewTime=None, leaseDurationSeconds=1)
                lease["spec"] = {k: v for k, v in lease["spec"].items() if v is not None}
                await self.store.update(LEASE, lease)
        except StoreError as exc:
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)

    async def run(self, leading: asyncio.Event, lost: asyncio.Event | None = None) -> None:
        """Campaign forever; ``leading`` is set while we hold the lease, ``lost`` (if
        given) while we do not."""
        try:
            while True:
                try:
                    held = await self.try_acquire_or_renew()
                except StoreError as exc:
                    log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                    held = False
                _flip(leading, lost, held)
                await asyncio.sleep(self.timing.retry_period_s)
        finally:
            _flip(leading, lost, False)
            await self.release()


def _flip(leading: asyncio.Event, lost: asyncio.Event | None, held: bool) -> None:
    if held:
        leading.set()
        if lost is not None:
            lost.clear()
    else:
        leading.clear()
        if lost is not None:
            lost.set()
