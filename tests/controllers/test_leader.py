"""Leader election on a Lease, on both stores."""

from __future__ import annotations

import asyncio

from controllers.api import LEASE
from controllers.store.leader import LeaderElector, LeaseTiming
from tests.controllers.conftest import StoreUnderTest

SHORT = LeaseTiming(lease_duration_s=1, retry_period_s=0.05)


async def test_one_leader_at_a_time_and_takeover(store_case: StoreUnderTest) -> None:
    store, ns = store_case.store, store_case.namespace
    a = LeaderElector(store, "diskplane-controllers", "a", ns, SHORT)
    b = LeaderElector(store, "diskplane-controllers", "b", ns, SHORT)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    assert await a.try_acquire_or_renew()  # renewal
    lease = await store.get(LEASE, ns, "diskplane-controllers")
    assert lease["spec"]["holderIdentity"] == "a"
    await a.release()
    assert await b.try_acquire_or_renew()
    lease = await store.get(LEASE, ns, "diskplane-controllers")
    assert lease["spec"]["holderIdentity"] == "b"
    assert lease["spec"]["leaseTransitions"] == 1


async def test_expired_lease_is_taken_over(store_case: StoreUnderTest) -> None:
    store, ns = store_case.store, store_case.namespace
    a = LeaderElector(store, "l", "a", ns, SHORT)
    b = LeaderElector(store, "l", "b", ns, SHORT)
    assert await a.try_acquire_or_renew()
    leading = asyncio.Event()
    task = asyncio.create_task(b.run(leading), name="elector-b")
    try:
        # a stops renewing; b waits out the 1 s lease, then leads.
        await asyncio.wait_for(leading.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    lease = await store.get(LEASE, ns, "l")
    assert lease["spec"]["holderIdentity"] == ""  # b released it on the way out
    assert not b.is_leader
