"""Real QEMU booting the tiny guest through the node agent (in-process).

Two boots (one test) on one PVC-backed volume: the first checks the ready line, the marker
written to the volume, the emptyDisk and cloud-init ISO seen by the guest, QEMU's
user and guest poweroff -> Succeeded; the second reads the marker back
incremented, then pauses, hotplugs/unplugs, snapshots/commits, mirrors and stops
gracefully on the same boot.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.virtnode.conftest import (
    BOOT_TIMEOUT,
    READY,
    is_root,
    make_volume,
    marker_written,
    qemu_uid,
    vmi_object,
)
from virtnode import (
    AccelInfo,
    AgentSettings,
    DiskError,
    MigrationError,
    NodeAgent,
    Phase,
    VmStateError,
)
from virtnode.migration import migrate
from virtnode.tinyguest import TinyGuest
from virtnode.volumeops import add_volume, commit, mirror, remove_volume, resize, snapshot

pytestmark = pytest.mark.guest

MiB = 2**20


async def first_boot_marker_ephemeral_disks_and_poweroff(
    agent: NodeAgent, tiny_guest: TinyGuest
) -> Path:
    root = make_volume(agent.settings, "pvc-root", 16 * MiB)
    obj = vmi_object(
        "vm1",
        tiny_guest,
        mode="poweroff",
        disks=[{"name": "root"}, {"name": "scratch"}, {"name": "ci", "disk": {"bus": "virtio"}}],
        volumes=[
            {"name": "root", "persistentVolumeClaim": {"claimName": "pvc-root"}},
            {"name": "scratch", "emptyDisk": {"capacity": "64Mi"}},
            {"name": "ci", "cloudInitNoCloud": {"userData": "#cloud-config\n"}},
        ],
    )
    vm = await agent.create(obj)
    status = vm.status()
    assert status["phase"] == "Running"
    assert status["accelerator"]["name"] in ("kvm", "tcg")
    assert status["accelerator"]["reason"]
    assert vm.identity is not None
    if is_root():
        assert qemu_uid(vm.identity.pid) == 107
    run_dir = vm.run.root
    assert (run_dir / "disks" / "scratch.qcow2").is_file()
    assert vm.console is not None
    await vm.console.wait_for(READY, limit=BOOT_TIMEOUT)
    text = vm.console.text()
    assert marker_written(text) == 1
    assert "DISKPLANE-DISK name=vdb size=67108864" in text
    assert "DISKPLANE-ISO name=vdc label=cidata" in text
    assert "instance-id: vm1.default" in text
    # mode=poweroff: the guest powers off by itself -> Succeeded, ephemeral disks gone.
    await vm.wait_finished(30)
    assert vm.phase is Phase.SUCCEEDED
    assert vm.reason == "GuestShutdown"
    assert not run_dir.exists()
    return root


async def test_persistence_then_live_operations(agent: NodeAgent, tiny_guest: TinyGuest) -> None:
    root = await first_boot_marker_ephemeral_disks_and_poweroff(agent, tiny_guest)
    # A new VMI on the same volume reads the marker back and increments it.
    make_volume(agent.settings, "pvc-hot", 8 * MiB)
    make_volume(agent.settings, "pvc-copy", 16 * MiB)
    obj = vmi_object(
        "vm2",
        tiny_guest,
        volumes=[{"name": "root", "persistentVolumeClaim": {"claimName": "pvc-root"}}],
    )
    vm = await agent.create(obj)
    console = vm.console
    assert console is not None
    await console.wait_for(READY, limit=BOOT_TIMEOUT)
    assert marker_written(console.text()) == 2
    pos = await console.wait_for(re.compile(rb"tick 2 disks=vda\r?\n"), limit=BOOT_TIMEOUT)

    # pause / unpause: the printable status follows, QEMU agrees, ticks stop and resume.
    await vm.pause()
    assert vm.printable_status() == "Paused"
    assert (await vm.execute("query-status"))["status"] == "paused"
    with pytest.raises(VmStateError):
        await remove_volume(vm, {"name": "root"})
    await vm.unpause()
    assert vm.printable_status() == "Running"
    pos = await console.wait_for(re.compile(rb"tick \d+ disks=vda\r?\n"), since=pos, limit=10)

    # hotplug: the guest sees vdb; unplug: it is gone again.
    body = {"name": "hot", "volumeSource": {"persistentVolumeClaim": {"claimName": "pvc-hot"}}}
    await add_volume(vm, body)
    pos = await console.wait_for(re.compile(rb"disks=vda,vdb\r?\n"), since=pos, limit=20)
    assert "hot" in vm.hotplugged
    await remove_volume(vm, {"name": "hot"})
    pos = await console.wait_for(re.compile(rb"disks=vda\r?\n"), since=pos, limit=20)
    assert "hot" not in vm.disks

    # snapshot then commit back; grow the disk; mirror it to another volume and pivot.
    snap = await snapshot(vm, {"name": "root"})
    assert Path(snap["snapshotFile"]).is_file()
    await commit(vm, {"name": "root"})
    assert not Path(snap["snapshotFile"]).exists()
    with root.open("r+b") as fh:
        fh.truncate(32 * MiB)
    assert (await resize(vm, {"name": "root"}))["size"] == 32 * MiB
    make_volume(agent.settings, "pvc-copy", 32 * MiB)
    await mirror(vm, {"name": "root", "target": {"claimName": "pvc-copy"}})
    blocks = await vm.execute("query-block")
    assert any(
        str(b.get("inserted", {}).get("file", "")).endswith("pvc-copy/disk.img") for b in blocks
    )
    copied = (agent.settings.volumes / "default" / "pvc-copy" / "disk.img").read_bytes()[:64]
    assert copied.startswith(b"DISKPLANE-MARKER count=2")

    # a migration to an agent that does not answer fails cleanly; the VM keeps running.
    with pytest.raises(MigrationError, match="did not answer"):
        await migrate(vm, {"targetAgent": "http://127.0.0.1:9"})
    assert vm.printable_status() == "Running"
    assert vm.status()["migrationState"]["failed"] is True

    # soft reboot: power button, the guest powers off, the agent resets instead of ending.
    await vm.soft_reboot()
    pos = await console.wait_for("DISKPLANE-GUEST BOOTED", since=pos, limit=BOOT_TIMEOUT)
    await console.wait_for(re.compile(rb"tick 2 disks=vda\r?\n"), since=pos, limit=BOOT_TIMEOUT)
    assert vm.phase is Phase.RUNNING
    assert not vm.paused

    # graceful stop: the guest answers the ACPI power button well within the grace period.
    loop = asyncio.get_running_loop()
    started = loop.time()
    await vm.stop()
    assert loop.time() - started < 10
    assert "DISKPLANE-GUEST POWER-BUTTON" in console.text()
    assert vm.phase is Phase.SUCCEEDED
    assert vm.reason == "GuestShutdown"


async def test_create_with_missing_volume_fails_cleanly(
    agent: NodeAgent, tiny_guest: TinyGuest
) -> None:
    obj = vmi_object(
        "vm3",
        tiny_guest,
        volumes=[{"name": "root", "persistentVolumeClaim": {"claimName": "absent"}}],
    )
    with pytest.raises(DiskError, match=r"volume default/absent .* has no disk"):
        await agent.create(obj)
    vm = agent.get("default", "vm3")
    assert vm.phase is Phase.FAILED
    assert vm.reason == "FailedCreate"
    assert vm.identity is None
    assert list(agent.settings.run_dir.iterdir()) == []


@pytest.mark.skipif(not is_root(), reason="QEMU's user only differs from the agent's as root")
async def test_qemu_user_falls_back_when_the_data_dir_is_unreachable(
    accel_info: AccelInfo, tmp_path: Path
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    node = NodeAgent(AgentSettings(data_dir=private / "data"), accel=accel_info)
    await node.start()
    try:
        assert node.ctx.run_as is None
        assert f"chmod o+x {private}" in node.qemu_user_note
    finally:
        await node.close()
