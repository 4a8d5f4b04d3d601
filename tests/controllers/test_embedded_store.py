"""Embedded-store properties beyond the shared contract: durability, scale, namespaces."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from controllers.api import DATAVOLUME
from controllers.store import EmbeddedStore
from controllers.store.embedded import DB_NAME


def dv(name: str, namespace: str = "default", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "source": {"blank": {}},
            "storage": {"resources": {"requests": {"storage": "1Gi"}}},
        },
    }


async def test_objects_and_versions_survive_a_restart(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path)
    created = await store.create(DATAVOLUME, dv("a"))
    await store.patch_status(DATAVOLUME, "default", "a", {"phase": "Succeeded"})
    before = (await store.list(DATAVOLUME)).resource_version
    await store.close()
    assert (tmp_path / DB_NAME).exists()

    reopened = await EmbeddedStore.open(tmp_path)
    try:
        got = await reopened.get(DATAVOLUME, "default", "a")
        assert got["metadata"]["uid"] == created["metadata"]["uid"]
        assert got["status"] == {"phase": "Succeeded"}
        after = await reopened.create(DATAVOLUME, dv("b"))
        assert int(after["metadata"]["resourceVersion"]) > int(before)
        # A watch resumed across the restart replays what came after its version.
        events = aiter(reopened.watch(DATAVOLUME, None, created["metadata"]["resourceVersion"]))
        first = await anext(events)
        await events.aclose()  # type: ignore[attr-defined]
        assert first.object["status"] == {"phase": "Succeeded"}
    finally:
        await reopened.close()


async def test_thousands_of_objects(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path)
    try:
        started = time.monotonic()
        for i in range(2000):
            await store.create(DATAVOLUME, dv(f"dv-{i:04d}", f"ns-{i % 4}", shard=str(i % 10)))
        create_s = time.monotonic() - started
        listing = await store.list(DATAVOLUME, "ns-1", "shard in (1,5)")
        assert len(listing.items) == 200  # i % 20 in {1, 5}
        assert len((await store.list(DATAVOLUME)).items) == 2000
        assert create_s < 30, f"2000 creates took {create_s:.1f} s"
    finally:
        await store.close()
