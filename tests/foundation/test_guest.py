"""The test guest: built from host packages and cached; boots, writes a marker, reads it back."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import threading
from pathlib import Path

import pycdlib
import pytest

from tests.support.guest import boot_guest
from virtnode.accel import AccelChoice
from virtnode.tinyguest import (
    POWER_BUTTON_LINE,
    READY_LINE,
    GuestBuildError,
    TinyGuest,
    build_tiny_guest,
    check_host_inputs,
    kernel_cmdline,
)

MARKER_WRITTEN = r"DISKPLANE-MARKER-WRITTEN dev=(\S+) value=\[DISKPLANE-MARKER count=(\d+)\]"
MARKER_READ = r"DISKPLANE-MARKER-READ dev=(\S+) value=\[(.*)\]"


def _cpio_names(initrd: Path) -> list[str]:
    data = gzip.decompress(initrd.read_bytes())
    names, offset = [], 0
    while True:
        header = data[offset : offset + 110]
        size, namesize = int(header[54:62], 16), int(header[94:102], 16)
        name = data[offset + 110 : offset + 110 + namesize - 1].decode()
        if name == "TRAILER!!!":
            return names
        names.append(name)
        offset += 110 + namesize
        offset += -offset % 4
        offset += size + (-size % 4)


def test_concurrent_builds_share_one_cache_entry(tmp_path: Path) -> None:
    results: list[TinyGuest] = []
    builders = [
        threading.Thread(target=lambda: results.append(build_tiny_guest(tmp_path)))
        for _ in range(2)
    ]
    for builder in builders:
        builder.start()
    for builder in builders:
        builder.join(120)
    assert len(results) == 2
    assert results[0] == results[1]
    entries = list((tmp_path / "tinyguest").iterdir())
    assert entries == [results[0].boot_disk.parent], "a temp build dir was left behind"
    mtime = results[0].initrd.stat().st_mtime_ns
    assert build_tiny_guest(tmp_path) == results[0]
    assert results[0].initrd.stat().st_mtime_ns == mtime, "a cached guest was rebuilt"


def test_initramfs_loads_virtio_ring_before_virtio(tiny_guest: TinyGuest) -> None:
    names = _cpio_names(tiny_guest.initrd)
    assert {"init", "bin/busybox", "dev/console"} <= set(names)
    modules = [
        n.removeprefix("lib/modules/").removesuffix(".ko") for n in names if n.endswith(".ko")
    ]
    for before, after in [("virtio_ring", "virtio"), ("virtio", "virtio_blk"), ("cdrom", "sr_mod")]:
        assert modules.index(before) < modules.index(after)
    assert {"virtio_pci", "button", "evdev", "isofs"} <= set(modules)


def test_boot_disk_has_fat_boot_and_marker_partitions(tiny_guest: TinyGuest) -> None:
    table = json.loads(subprocess.check_output(["sfdisk", "--json", str(tiny_guest.boot_disk)]))
    boot, marker = table["partitiontable"]["partitions"]
    assert (boot["type"], boot.get("bootable")) == ("6", True)
    with tiny_guest.boot_disk.open("rb") as disk:
        assert disk.read(512)[510:] == b"\x55\xaa"
        disk.seek(marker["start"] * 512)
        assert disk.read(512).rstrip(b"\0") == b"DISKPLANE-MARKER count=0"


def test_boot_disk_copy_as_qcow2(tiny_guest: TinyGuest, tmp_path: Path) -> None:
    copy = tiny_guest.write_boot_disk(tmp_path / "boot.qcow2")
    info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", str(copy)]))
    assert (info["format"], info["virtual-size"]) == ("qcow2", 64 * 1024 * 1024)
    with pytest.raises(GuestBuildError, match="vmdk"):
        tiny_guest.write_boot_disk(tmp_path / "boot.vmdk", fmt="vmdk")


def test_missing_kernel_names_the_package(tmp_path: Path) -> None:
    assert check_host_inputs().startswith("kernel ")
    with pytest.raises(GuestBuildError, match="install the linux-image-amd64 package"):
        build_tiny_guest(tmp_path, kernel_release="0.0.0-missing")
    assert not (tmp_path / "tinyguest").exists()


def test_kernel_cmdline_names_mode_and_marker() -> None:
    assert "mode=wait markdev=/dev/vdb" in kernel_cmdline("wait", "/dev/vdb")
    with pytest.raises(GuestBuildError, match="reboot"):
        kernel_cmdline("reboot")


@pytest.mark.guest
async def test_marker_survives_a_reboot(
    tiny_guest: TinyGuest, guest_accel: AccelChoice, tmp_path: Path
) -> None:
    disk = tiny_guest.write_boot_disk(tmp_path / "boot.qcow2")
    async with boot_guest(tiny_guest, tmp_path, disks=[disk], accel=guest_accel) as run:
        assert (await run.wait_for(MARKER_READ)).groups() == (
            "/dev/vda2",
            "DISKPLANE-MARKER count=0",
        )
        assert (await run.wait_for(MARKER_WRITTEN)).groups() == ("/dev/vda2", "1")
        await run.wait_for(READY_LINE)
        assert await run.wait_exit() == 0

    async with boot_guest(
        tiny_guest, tmp_path, disks=[disk], mode="wait", accel=guest_accel
    ) as run:
        assert (await run.wait_for(MARKER_READ)).group(2) == "DISKPLANE-MARKER count=1"
        assert (await run.wait_for(MARKER_WRITTEN)).group(2) == "2"
        await run.wait_for(READY_LINE)
        await run.wait_for(r"^tick 1 disks=vda$")
        await run.powerdown()
        await run.wait_for(POWER_BUTTON_LINE)
        assert await run.wait_exit() == 0


def _cidata_iso(path: Path) -> Path:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    meta = b"instance-id: iid-guest-test\n"
    iso.add_fp(io.BytesIO(meta), len(meta), "/METADATA.;1", rr_name="meta-data")
    iso.write(str(path))
    iso.close()
    return path


@pytest.mark.guest
async def test_boot_disk_boots_on_its_own(
    tiny_guest: TinyGuest, guest_accel: AccelChoice, tmp_path: Path
) -> None:
    disk = tiny_guest.write_boot_disk(tmp_path / "disk.img", fmt="raw")
    iso = _cidata_iso(tmp_path / "cidata.iso")
    async with boot_guest(
        tiny_guest, tmp_path, style="disk", disks=[disk, iso], accel=guest_accel
    ) as run:
        await run.wait_for("SYSLINUX")
        await run.wait_for("DISKPLANE-GUEST BOOTED mode=wait")
        assert (await run.wait_for(MARKER_WRITTEN)).groups() == ("/dev/vda2", "1")
        await run.wait_for(r"DISKPLANE-DISK name=vdb size=\d+")
        await run.wait_for("DISKPLANE-ISO name=vdb label=cidata")
        await run.wait_for("DISKPLANE-CIDATA meta-data: instance-id: iid-guest-test")
        await run.wait_for(READY_LINE)
        await run.wait_for(r"^tick 1 disks=vda,vdb$")
        await run.powerdown()
        assert await run.wait_exit() == 0
    with disk.open("rb") as f:
        f.seek(83968 * 512)
        assert f.read(512).rstrip(b"\0") == b"DISKPLANE-MARKER count=1\n"
