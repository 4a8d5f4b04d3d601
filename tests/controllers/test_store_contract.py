"""One contract, two stores: the embedded SQLite store and a real kube-apiserver."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest

from controllers.api import DATAVOLUME, PERSISTENTVOLUMECLAIM
from controllers.errors import AlreadyExists, Conflict, Gone, NotFound
from controllers.store import EventType, WatchEvent
from controllers.store.reflector import Reflector
from tests.controllers.conftest import TEST_CHANGE_LOG_LIMIT, StoreUnderTest

# Every wait in these tests is bounded by this.
EVENT_TIMEOUT = 20.0


def dv(name: str, namespace: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": {
            "source": {"blank": {}},
            "storage": {"resources": {"requests": {"storage": "1Gi"}}},
        },
    }


async def next_event(events: AsyncIterator[WatchEvent]) -> WatchEvent:
    return await asyncio.wait_for(anext(events), EVENT_TIMEOUT)


async def test_create_get_list_with_selectors(store_case: StoreUnderTest) -> None:
    store, ns = store_case.store, store_case.namespace
    created = await store.create(DATAVOLUME, dv("a", ns, {"tier": "gold", "app": "x"}))
    await store.create(DATAVOLUME, dv("b", ns, {"tier": "silver"}))
    await store.create(DATAVOLUME, dv("c", ns))
    md = created["metadata"]
    assert md["uid"]
    assert md["resourceVersion"]
    assert md["creationTimestamp"]
    assert md["generation"] == 1
    got = await store.get(DATAVOLUME, ns, "a")
    assert got["spec"] == created["spec"]

    async def names(selector: str) -> list[str]:
        listing = await store.list(DATAVOLUME, ns, selector)
        return sorted(o["metadata"]["name"] for o in listing.items)

    assert await names("") == ["a", "b", "c"]
    assert await names("tier=gold") == ["a"]
    assert await names("tier!=gold") == ["b", "c"]
    assert await names("tier in (gold,silver)") == ["a", "b"]
    assert await names("tier notin (gold)") == ["b", "c"]
    assert await names("app") == ["a"]
    assert await names("!tier") == ["c"]
    assert await names("tier,app=x") == ["a"]


async def test_missing_and_duplicate(store_case: StoreUnderTest) -> None:
    store, ns = store_case.store, store_case.namespace
    with pytest.raises(NotFound):
        await store.get(DATAVOLUME, ns, "nope")
    await store.create(DATAVOLUME, dv("a", ns))
    with pytest.raises(AlreadyExists):
        await store.create(DATAVOLUME, dv("a", ns))
    with pytest.raises(NotFound):
        await store.delete(DATAVOLUME, ns, "nope")


async def test_update_is_optimistic_and_leaves_status_alone(store_case: StoreUnderTest) -> None:
    store, ns = store_case.store, store_case.namespace
    first = await store.create(DATAVOLUME, dv("a", ns))
    await store.patch_status(DATAVOLUME, ns, "a", {"phase": "Pending"})
    stale = copy.deepcopy(first)
    fresh = await store.get(DATAVOLUME, ns, "a")
    fresh["metadata"]["labels"] = {"k": "v"}
    fresh["spec"]["preallocation"] = True
    fresh["status"] = {"phase": "Succeeded"}  # ignored: status has its own subresource
    updated = await store.update(DATAVOLUME, fresh)
    assert updated["metadata"]["labels"] == {"k": "v"}
    assert updated["metadata"]["generation"] == 2
    assert updated["status"] == {"phase": "Pending"}
    assert int(updated["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    stale["metadata"]["labels"] = {"lost": "update"}
    with pytest.raises(Conflict):
        await store.update(DATAVOLUME, stale)


async def test_patch_status_merges_and_can_be_conditional(store_case: StoreUnderTest) -> None:
    store, ns = store_case.store, store_case.namespace
    created = await store.create(DATAVOLUME, dv("a", ns))
    one = await store.patch_status(
        DATAVOLUME, ns, "a", {"phase": "ImportInProgress", "progress": "10.00%"}
    )
    two = await store.patch_status(DATAVOLUME, ns, "a", {"progress": "45.00%", "restartCount": 1})
    assert two["status"] == {"phase": "ImportInProgress", "progress": "45.00%", "restartCount": 1}
    assert two["metadata"]["generation"] == 1
    removed = await store.patch_status(DATAVOLUME, ns, "a", {"restartCount": None})
    assert "restartCount" not in removed["status"]
    with pytest.raises(Conflict):
        await store.patch_status(
            DATAVOLUME, ns, "a", {"phase": "Failed"}, one["metadata"]["resourceVersion"]
        )
    ok = await store.patch_status(
        DATAVOLUME, ns, "a", {"phase": "Succeeded"}, removed["metadata"]["resourceVersion"]
    )
    assert ok["status"]["phase"] == "Succeeded"
    assert created["metadata"]["uid"] == ok["metadata"]["uid"]


async def test_watch_from_a_version_and_resume(store_case: StoreUnderTest) -> None:
    store, ns = store_case.store, store_case.namespace
    listing = await store.list(DATAVOLUME, ns)
    events = aiter(store.watch(DATAVOLUME, ns, listing.resource_version))
    try:
        await store.create(DATAVOLUME, dv("a", ns))
        patched = await store.patch_status(DATAVOLUME, ns, "a", {"phase": "Pending"})
        await store.delete(DATAVOLUME, ns, "a")
        seen = [await next_event(events) for _ in range(3)]
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    assert [e.type for e in seen] == [EventType.ADDED, EventType.MODIFIED, EventType.DELETED]
    assert seen[1].object["status"] == {"phase": "Pending"}
    # Resuming from the MODIFIED event's version replays only what came after it.
    resumed = aiter(store.watch(DATAVOLUME, ns, patched["metadata"]["resourceVersion"]))
    try:
        again = await next_event(resumed)
    finally:
        await resumed.aclose()  # type: ignore[attr-defined]
    assert again.type == EventType.DELETED
    assert again.object["metadata"]["name"] == "a"


async def test_finalizers_hold_deletion(store_case: StoreUnderTest) -> None:
    store, ns = store_case.store, store_case.namespace
    obj = dv("a", ns)
    obj["metadata"]["finalizers"] = ["diskplane.io/volume"]
    await store.create(DATAVOLUME, obj)
    pending = await store.delete(DATAVOLUME, ns, "a")
    assert pending is not None
    assert pending["metadata"]["deletionTimestamp"]
    current = await store.get(DATAVOLUME, ns, "a")
    assert current["metadata"]["deletionTimestamp"]
    current["metadata"]["finalizers"] = []
    await store.update(DATAVOLUME, current)
    with pytest.raises(NotFound):
        await store.get(DATAVOLUME, ns, "a")


async def test_owner_reference_cascade(store_case: StoreUnderTest) -> None:
    if store_case.cluster is not None and not store_case.cluster.has_controller_manager:
        pytest.skip("garbage collection needs kube-controller-manager, which was not built")
    store, ns = store_case.store, store_case.namespace
    owner = await store.create(DATAVOLUME, dv("a", ns))
    ref = {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "name": "a",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    pvc = {
        "metadata": {"name": "a", "namespace": ns, "ownerReferences": [ref]},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    await store.create(PERSISTENTVOLUMECLAIM, pvc)
    listing = await store.list(PERSISTENTVOLUMECLAIM, ns)
    events = aiter(store.watch(PERSISTENTVOLUMECLAIM, ns, listing.resource_version))
    try:
        await store.delete(DATAVOLUME, ns, "a")
        event = await next_event(events)
        while event.type != EventType.DELETED:  # kube marks the PVC deleting first
            event = await next_event(events)
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    assert event.object["metadata"]["name"] == "a"
    with pytest.raises(NotFound):
        await store.get(PERSISTENTVOLUMECLAIM, ns, "a")


async def test_stale_watch_version_is_gone_and_the_reflector_relists(
    store_case: StoreUnderTest,
) -> None:
    store, ns = store_case.store, store_case.namespace
    first = await store.create(DATAVOLUME, dv("a", ns))
    old_rv = first["metadata"]["resourceVersion"]
    writes = TEST_CHANGE_LOG_LIMIT * 2
    if store_case.name == "kubernetes":
        # The apiserver's watch cache grows to hold minutes of history, so ask for a
        # version from before the cache began (the CRDs did not exist yet).
        old_rv = "1"
    for i in range(writes):
        await store.patch_status(DATAVOLUME, ns, "a", {"progress": f"{i}.00%"})
    with pytest.raises(Gone):
        async for _ in store.watch(DATAVOLUME, ns, old_rv):
            pass
    reflector = Reflector(store, DATAVOLUME, ns)
    events = aiter(reflector.events())
    try:
        added = await next_event(events)
        assert added.type == EventType.ADDED
        assert added.object["status"]["progress"] == f"{writes - 1}.00%"
        await store.create(DATAVOLUME, dv("b", ns))
        follow = await next_event(events)
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    assert (follow.type, follow.object["metadata"]["name"]) == (EventType.ADDED, "b")
    assert set(reflector.cache) == {(ns, "a"), (ns, "b")}
