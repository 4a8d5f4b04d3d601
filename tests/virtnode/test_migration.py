"""Live migration between node agents (real processes, one guest boot).

A -> B share the volume pool (plain live migration); B -> C do not (block migration:
NBD export on C + blockdev-mirror from B, then migrate). The guest's tick counter
continues on each target without a reboot, and C's copy of the volume is identical.
The guest also runs a containerDisk (vdb) whose marker it bumps from 5 to 6 in its
overlay at boot: each target pulls the image itself and receives only the overlay
(``sync: top`` over NBD), so the target's overlay reads back count=6.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from pathlib import Path

import aiohttp
import pytest

from containerdisk import RegistryClient
from tests.support.registry import Registry
from tests.virtnode.agentproc import AgentProcess, api, console_until
from tests.virtnode.conftest import make_volume, vmi_object
from virtnode import (
    AccelInfo,
    AgentClient,
    AgentSettings,
    AgentUnavailableError,
    SpecError,
    VmNotFoundError,
    VmStateError,
)
from virtnode.rundir import RunDir
from virtnode.tinyguest import TinyGuest

pytestmark = pytest.mark.guest

MiB = 2**20


def vm_url(agent: AgentProcess) -> str:
    return f"{agent.url}/v1/namespaces/default/vmis/mig"


async def overlay_first_sector(agent: AgentProcess, scratch: Path) -> bytes:
    """Sector 0 of the running VM's containerDisk overlay on ``agent`` (read shared)."""
    run = RunDir.for_vm(agent.data_dir / "run", "default", "mig")
    out = scratch / f"overlay-{agent.port}.raw"
    proc = await asyncio.create_subprocess_exec(
        "qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw",
        str(run.disks / "cd.overlay.qcow2"), str(out),
    )  # fmt: skip
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    with out.open("rb") as fh:
        return fh.read(512)


async def push_marker_image(registry: Registry, scratch: Path) -> str:
    disk = scratch / "cd.raw"
    disk.write_bytes(b"DISKPLANE-MARKER count=5\n".ljust(512, b"\0") + bytes(8 * MiB - 512))
    image = f"{registry.host}/vm/migmarker:v1"
    async with RegistryClient() as client:
        await client.push_disk(disk, image)
    return image


async def test_live_then_block_migration(
    data_dir: Path, accel_info: AccelInfo, tiny_guest: TinyGuest, registry: Registry
) -> None:
    shared = data_dir / "shared-pool"
    dirs = [data_dir / n for n in ("a", "b", "c")]
    for d in dirs:
        d.mkdir(mode=0o711)
    a = AgentProcess(dirs[0], accel_info.accel, volume_dir=shared)
    b = AgentProcess(dirs[1], accel_info.accel, volume_dir=shared)
    c = AgentProcess(dirs[2], accel_info.accel)
    source_volume = make_volume(
        AgentSettings(data_dir=data_dir, volume_dir=shared), "pvc-m", 16 * MiB
    )
    with source_volume.open("r+b") as fh:  # data to copy, and no marker: vdb gets it
        fh.write(b"\0" + os.urandom(2 * MiB))
    image = await push_marker_image(registry, data_dir)
    pids: list[int] = []
    try:
        for agent in (a, b, c):
            await agent.start()
        async with aiohttp.ClientSession() as session:
            obj = vmi_object(
                "mig",
                tiny_guest,
                markdev="auto",
                volumes=[
                    {"name": "root", "persistentVolumeClaim": {"claimName": "pvc-m"}},
                    {"name": "cd", "containerDisk": {"image": image}},
                ],
            )
            created = await api(session, "POST", a.url + "/v1/vmis", obj, 201)
            pids.append(created["status"]["qemu"]["pid"])
            match = await console_until(
                session, vm_url(a) + "/console", r"tick (\d+) disks=vda,vdb\r?\n"
            )
            assert "MARKER-WRITTEN dev=/dev/vdb value=[DISKPLANE-MARKER count=6]" in match.string
            before = int(match.group(1))

            # Shared storage: plain live migration A -> B.
            done = await api(session, "PUT", vm_url(a) + "/migrate", {"targetAgent": b.url})
            stats = done["result"]
            assert stats["transferredBytes"] > 0
            assert stats["totalTimeMs"] > 0
            assert stats["downtimeMs"] is not None
            assert 0 < stats["switchoverMs"] < 5000
            assert stats["mirroredDisks"] == ["cd"]  # the overlay only; the PVC is shared
            source = await api(session, "GET", vm_url(a))
            assert source["status"]["phase"] == "Succeeded"
            assert source["status"]["reason"] == "Migrated"
            target = await api(session, "GET", vm_url(b))
            assert target["status"]["phase"] == "Running"
            pids.append(target["status"]["qemu"]["pid"])
            text = (
                await console_until(session, vm_url(b) + "/console", rf"tick {before + 2} ")
            ).string
            assert "BOOTED" not in text  # the same guest continues, no reboot
            assert (await overlay_first_sector(b, data_dir)).startswith(b"DISKPLANE-MARKER count=6")
            pinned = target["spec"]["volumes"][1]["containerDisk"]["image"]
            assert pinned.startswith(image + "@sha256:")
            assert len(list((dirs[1] / "cache" / "containerdisks").glob("sha256-*"))) == 1
            first = int(re.search(r"tick (\d+) ", text).group(1))  # type: ignore[union-attr]
            assert first > before

            # No shared storage: block migration B -> C.
            done = await api(
                session,
                "PUT",
                vm_url(b) + "/migrate",
                {"targetAgent": c.url, "blockMigration": True},
            )
            assert done["result"]["mirroredDisks"] == ["root", "cd"]
            on_c = await api(session, "GET", vm_url(c))
            assert on_c["status"]["phase"] == "Running"
            pids.append(on_c["status"]["qemu"]["pid"])
            await console_until(session, vm_url(c) + "/console", rf"tick {first + 4} ")
            assert (await overlay_first_sector(c, data_dir)).startswith(b"DISKPLANE-MARKER count=6")
            stopped = await api(session, "PUT", vm_url(c) + "/stop", {})
            assert stopped["vmi"]["status"]["phase"] == "Succeeded"
            copy = dirs[2] / "volumes" / "default" / "pvc-m" / "disk.img"
            assert copy.read_bytes() == source_volume.read_bytes()
            # The Python client sees the same, and maps errors to virtnode's.
            async with AgentClient(a.url) as client:
                metrics = await client.metrics()
                assert 'diskplane_migrations_total{result="succeeded"} 1' in metrics
                assert (await client.get("default", "mig"))["status"]["reason"] == "Migrated"
                assert [i["metadata"]["name"] for i in await client.list("default")] == ["mig"]
                with pytest.raises(VmNotFoundError):
                    await client.get("default", "nope")
                with pytest.raises(VmStateError, match="Succeeded"):
                    await client.action("default", "mig", "pause")
                with pytest.raises(SpecError):
                    await client.create({"metadata": {"name": "BAD"}, "spec": {}})
            async with AgentClient("http://127.0.0.1:9") as dead:
                with pytest.raises(AgentUnavailableError):
                    await dead.health()
    finally:
        for agent in (a, b, c):
            await agent.stop()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
