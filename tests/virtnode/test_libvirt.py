"""The libvirt driver: domain XML (pure) and one real guest under libvirtd started by hand.

libvirtd runs here without systemd: the session fixture starts ``virtlogd -d`` and
``libvirtd -d`` when ``qemu:///system`` does not answer, and stops what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.virtnode.conftest import BOOT_TIMEOUT, READY, kill_all, make_volume, vmi_object
from virtnode import (
    AccelInfo,
    AgentSettings,
    DriverUnavailableError,
    MigrationError,
    NodeAgent,
    Phase,
    VirtualMachine,
)
from virtnode.blockdev import AttachedDisk
from virtnode.libvirt_driver import LibvirtDriver, domain_name, domain_xml, free_virtio_dev
from virtnode.migration import migrate
from virtnode.rundir import RunDir
from virtnode.spec import parse_vmi
from virtnode.tinyguest import POWER_BUTTON_LINE, TinyGuest
from virtnode.volumeops import add_volume, commit, mirror, remove_volume, resize, snapshot

MiB = 2**20
# How long the hand-started daemons may take to answer.
DAEMON_TIMEOUT = 20.0


def test_domain_xml_escapes_and_maps_disks(tmp_path: Path) -> None:
    obj = vmi_object("x", TinyGuest(*(tmp_path / n for n in ("k", "v", "i", "b")), "r"), volumes=[])
    for name in ("k", "v", "i", "b"):
        (tmp_path / name).write_bytes(b"")
    obj["spec"]["domain"]["firmware"]["kernelBoot"]["host"] = {
        "kernelPath": str(tmp_path / "v"),
        "initrdPath": str(tmp_path / "i"),
    }
    obj["spec"]["domain"]["devices"]["disks"] = [
        {"name": "root", "bootOrder": 1, "serial": "S1", "cache": "none", "io": "native"},
        {"name": "ci", "cdrom": {"bus": "sata"}},
    ]
    obj["spec"]["volumes"] = [
        {"name": "root", "persistentVolumeClaim": {"claimName": "p"}},
        {"name": "ci", "cloudInitNoCloud": {"userData": "x"}},
    ]
    spec = parse_vmi(obj)
    evil = tmp_path / "a'<&>\".img"
    disks = [
        AttachedDisk(spec.disks[0], evil, "raw"),
        AttachedDisk(spec.disks[1], tmp_path / "ci.iso", "raw", readonly=True),
    ]
    xml = domain_xml(spec, disks, RunDir(tmp_path / "run"), "tcg", hotplug_ports=3)
    root = ET.fromstring(xml)
    ports = root.findall("devices/controller[@model='pcie-root-port']")
    assert len(ports) == 3
    assert free_virtio_dev(xml) == "vdb"
    assert root.get("type") == "qemu"
    assert root.findtext("name") == domain_name(spec)
    assert root.findtext("memory") == "256"
    first, second = root.findall("devices/disk")
    assert first.find("source").get("file") == str(evil)  # type: ignore[union-attr]
    assert first.find("target").attrib == {"dev": "vda", "bus": "virtio"}  # type: ignore[union-attr]
    assert first.find("driver").attrib == {  # type: ignore[union-attr]
        "name": "qemu",
        "type": "raw",
        "cache": "none",
        "io": "native",
    }
    assert first.find("boot").get("order") == "1"  # type: ignore[union-attr]
    assert first.find("alias").get("name") == "ua-root"  # type: ignore[union-attr]
    assert second.get("device") == "cdrom"
    assert second.find("readonly") is not None
    assert second.find("target").attrib == {"dev": "sda", "bus": "sata"}  # type: ignore[union-attr]
    assert root.findtext("os/cmdline") == spec.kernel_boot.cmdline  # type: ignore[union-attr]


def _libvirt_answers() -> bool:
    result = subprocess.run(
        ["virsh", "-c", "qemu:///system", "version"], capture_output=True, timeout=10, check=False
    )
    return result.returncode == 0


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[None]:
    """libvirtd for qemu:///system, started by hand (no systemd) when not running."""
    if _libvirt_answers():
        yield
        return
    pid_dir = Path(tempfile.mkdtemp(prefix="dplibvirt-"))
    started: list[Path] = []
    try:
        for daemon in ("virtlogd", "libvirtd"):
            pidfile = pid_dir / f"{daemon}.pid"
            subprocess.run([daemon, "-d", "-p", str(pidfile)], check=True, timeout=30)
            started.append(pidfile)
        deadline = time.monotonic() + DAEMON_TIMEOUT
        while not _libvirt_answers():
            assert time.monotonic() < deadline, "libvirtd did not answer"
            time.sleep(0.1)
        yield
    finally:
        for pidfile in reversed(started):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
        with contextlib.suppress(OSError):
            for entry in pid_dir.iterdir():
                entry.unlink()
            pid_dir.rmdir()


@pytest.fixture
async def libvirt_agent(
    data_dir: Path, accel_info: AccelInfo, libvirtd: None
) -> AsyncIterator[NodeAgent]:
    node = NodeAgent(AgentSettings(data_dir=data_dir, driver="libvirt"), accel=accel_info)
    await node.start()
    try:
        yield node
    finally:
        await kill_all(node)


@pytest.mark.guest
async def test_guest_lifecycle_under_libvirt(
    libvirt_agent: NodeAgent, tiny_guest: TinyGuest
) -> None:
    make_volume(libvirt_agent.settings, "pvc-lv", 8 * MiB)
    obj = vmi_object(
        "lv1",
        tiny_guest,
        volumes=[{"name": "root", "persistentVolumeClaim": {"claimName": "pvc-lv"}}],
    )
    vm = await libvirt_agent.create(obj)
    assert vm.status()["phase"] == "Running"
    assert vm.console is not None
    await vm.console.wait_for(READY, limit=BOOT_TIMEOUT)
    await vm.console.wait_for("tick 2 ", limit=BOOT_TIMEOUT)
    await vm.pause()
    assert (await vm.execute("query-status"))["status"] == "paused"
    await vm.unpause()

    # Hotplug and unplug go through libvirt: the guest sees vdb come and go, and
    # libvirt's live domain XML has the disk (alias ua-hot) exactly while it is plugged.
    make_volume(libvirt_agent.settings, "pvc-lvhot", 4 * MiB)
    body = {"name": "hot", "volumeSource": {"persistentVolumeClaim": {"claimName": "pvc-lvhot"}}}
    pos = vm.console.end
    await add_volume(vm, body)
    pos = await vm.console.wait_for(re.compile(rb"disks=vda,vdb\r?\n"), since=pos, limit=20)
    assert "ua-hot" in await _live_aliases(libvirt_agent, vm)
    await remove_volume(vm, {"name": "hot"})
    await vm.console.wait_for(re.compile(rb"disks=vda\r?\n"), since=pos, limit=20)
    assert "ua-hot" not in await _live_aliases(libvirt_agent, vm)
    # Resize goes through libvirt's blockResize; QEMU sees the new size.
    assert (await resize(vm, {"name": "root", "size": "16Mi"}))["size"] == 16 * MiB
    blocks = await vm.execute("query-block")
    sizes = {b["qdev"]: b["inserted"]["image"]["virtual-size"] for b in blocks if "inserted" in b}
    assert [v for k, v in sizes.items() if "ua-root" in k] == [16 * MiB]
    # Snapshot, commit and mirror are libvirt block jobs; its live XML follows each step.
    snap = Path((await snapshot(vm, {"name": "root"}))["snapshotFile"])
    assert await _live_sources(libvirt_agent, vm) == [str(snap)]
    await commit(vm, {"name": "root"})
    assert not snap.exists()
    root = libvirt_agent.settings.volumes / "default" / "pvc-lv" / "disk.img"
    assert await _live_sources(libvirt_agent, vm) == [str(root)]
    copy = make_volume(libvirt_agent.settings, "pvc-lvcopy", 16 * MiB)
    await mirror(vm, {"name": "root", "target": {"claimName": "pvc-lvcopy"}})
    assert await _live_sources(libvirt_agent, vm) == [str(copy)]
    assert copy.read_bytes()[:64].startswith(b"DISKPLANE-MARKER count=1")
    with pytest.raises(MigrationError, match="libvirt driver"):
        await migrate(vm, {"targetAgent": "http://127.0.0.1:9"})

    # A restarted agent re-adopts the libvirt domain (QMP passthrough and console again).
    await libvirt_agent.close()
    libvirt_agent.vms.clear()
    again = NodeAgent(libvirt_agent.settings, accel=libvirt_agent.ctx.accel)
    await again.start()
    try:
        vm = again.get("default", "lv1")
        assert vm.phase is Phase.RUNNING
        assert (await vm.execute("query-status"))["status"] == "running"
        assert vm.console is not None
        await vm.console.wait_for(re.compile(rb"tick \d+ "), since=vm.console.end, limit=10)
        await vm.stop()
    finally:
        await kill_all(again)
    assert POWER_BUTTON_LINE in vm.console.text()
    assert vm.phase is Phase.SUCCEEDED
    assert vm.reason == "GuestShutdown"


async def _live_aliases(agent: NodeAgent, vm: VirtualMachine) -> set[str]:
    driver = agent.ctx.driver
    assert isinstance(driver, LibvirtDriver)

    def aliases() -> set[str]:
        xml = driver.conn.lookupByName(domain_name(vm.spec)).XMLDesc(0)
        return {a.get("name", "") for a in ET.fromstring(xml).iterfind("devices/disk/alias")}

    return await asyncio.to_thread(aliases)


async def _live_sources(agent: NodeAgent, vm: VirtualMachine) -> list[str]:
    """The top source file of each disk in libvirt's live domain XML."""
    driver = agent.ctx.driver
    assert isinstance(driver, LibvirtDriver)

    def sources() -> list[str]:
        xml = driver.conn.lookupByName(domain_name(vm.spec)).XMLDesc(0)
        return [d.get("file", "") for d in ET.fromstring(xml).iterfind("devices/disk/source")]

    return await asyncio.to_thread(sources)


async def test_unreachable_libvirt_is_named(data_dir: Path, accel_info: AccelInfo) -> None:
    uri = "qemu:///system?socket=/nonexistent/libvirt-sock"
    node = NodeAgent(
        AgentSettings(data_dir=data_dir, driver="libvirt", libvirt_uri=uri), accel=accel_info
    )
    with pytest.raises(DriverUnavailableError, match=r"virtlogd -d; libvirtd -d"):
        await node.start()
