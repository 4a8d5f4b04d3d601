"""Persistent containerDisk: the same image digest imported twice is cloned, not pulled."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cdi import ImportRequest, ImportSettings, MiB, SourceSpec, VolumePool, run_import
from tests.cdi.conftest import same_disk
from tests.cdi.test_registry import push
from tests.support.faultproxy import FaultyRegistry


def _blob_gets(registry: FaultyRegistry) -> list[str]:
    return [r.path for r in registry.log if r.method == "GET" and "/blobs/" in r.path]


async def test_same_digest_is_cloned_from_the_ready_volume(
    registry_faulty: FaultyRegistry, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    url = await push(registry_faulty.upstream, base, "disks/persist")
    url = url.replace(registry_faulty.upstream.host, registry_faulty.host)
    spec = SourceSpec(kind="registry", url=url)
    first = await run_import(pool, ImportRequest("ns", "a", 64 * MiB, spec), settings=settings)
    assert first.reused_from is None
    assert _blob_gets(registry_faulty)  # the first import pulled the layer
    image = json.loads((first.volume.directory / "volume.json").read_text())["image"]
    assert image["manifestDigest"].startswith("sha256:")
    pinned = f"{registry_faulty.host}/disks/persist:v1@{image['manifestDigest']}"
    assert image["reference"] == pinned

    registry_faulty.proxy.clear_log()
    second = await run_import(pool, ImportRequest("other", "b", 32 * MiB, spec), settings=settings)
    assert second.reused_from == "ns/a"
    assert same_disk(base, second.volume)
    assert _blob_gets(registry_faulty) == []
    manifests = [r for r in registry_faulty.log if "/manifests/" in r.path]
    assert len(manifests) == 1
    assert second.volume.image() is not None
    assert pool.get("other", "b").image() == second.volume.image()


async def test_a_changed_or_checksummed_donor_is_not_reused(
    registry_faulty: FaultyRegistry, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    url = await push(registry_faulty.upstream, base, "disks/changed")
    spec = SourceSpec(kind="registry", url=url.replace(registry_faulty.upstream.host,
                                                       registry_faulty.host))  # fmt: skip
    first = await run_import(pool, ImportRequest("ns", "a", 64 * MiB, spec), settings=settings)
    with open(first.volume.disk_path, "r+b") as disk:  # a VM wrote to the donor
        disk.write(b"changed by a guest")
        os.fsync(disk.fileno())
    registry_faulty.proxy.clear_log()
    second = await run_import(pool, ImportRequest("ns", "b", 64 * MiB, spec), settings=settings)
    assert second.reused_from is None
    assert _blob_gets(registry_faulty)
    assert same_disk(base, second.volume)
