"""containerDisk volumes: pulled once per digest into the node cache, ephemeral overlay per VM.

A 16 MiB disk holding a marker is pushed to the test registry as a containerDisk;
two VMIs boot from it one after the other (mode=poweroff). Each reads the image's
marker (count=5) and writes count=6 into its own overlay, so the second boot reads 5
again; the image was pulled once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from containerdisk import RegistryClient
from tests.support.registry import Registry
from tests.virtnode.conftest import BOOT_TIMEOUT, READY, marker_written, vmi_object
from virtnode import NodeAgent, Phase
from virtnode.containerdisks import NodeDiskCache
from virtnode.tinyguest import TinyGuest

pytestmark = pytest.mark.guest

MiB = 2**20


async def test_containerdisk_is_cached_and_ephemeral(
    agent: NodeAgent, tiny_guest: TinyGuest, registry: Registry, tmp_path: Path
) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"DISKPLANE-MARKER count=5\n".ljust(512, b"\0") + bytes(16 * MiB - 512))
    image = f"{registry.host}/vm/marker:v1"
    async with RegistryClient() as client:
        await client.push_disk(disk, image)
    cache = agent.ctx.containerdisks
    assert isinstance(cache, NodeDiskCache)

    for attempt in range(2):
        obj = vmi_object(
            f"cd{attempt}",
            tiny_guest,
            mode="poweroff",
            volumes=[{"name": "root", "containerDisk": {"image": image}}],
        )
        vm = await agent.create(obj)
        overlay = vm.run.disks / "root.overlay.qcow2"
        assert overlay.is_file()
        assert vm.console is not None
        await vm.console.wait_for(READY, limit=BOOT_TIMEOUT)
        assert "MARKER-READ dev=/dev/vda value=[DISKPLANE-MARKER count=5]" in vm.console.text()
        assert marker_written(vm.console.text()) == 6
        await vm.wait_finished(30)
        assert vm.phase is Phase.SUCCEEDED
        assert not overlay.exists()
    assert cache.pulls == 1
    cached = list(cache.root.glob("sha256-*/disk.img"))
    assert len(cached) == 1
    assert cached[0].stat().st_mode & 0o777 == 0o444
