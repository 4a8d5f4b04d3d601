"""The reflink (FICLONE) path of cdi.diskcopy on a real reflink-capable XFS.

The root filesystem here is ext4, where only the sparse fallback runs; this
test mounts a loop-backed XFS made with ``reflink=1`` so the clone the
service's ``pvc`` source and the persistent containerDisk reuse perform
takes the shared-extent path for real.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdi.diskcopy import copy_disk, data_extents
from cdi.volumes import VolumePool

MiB = 1024 * 1024
IMAGE_SIZE = 512 * MiB
VOLUME_CAPACITY = 64 * MiB
# Every external command in this test is bounded by this.
COMMAND_TIMEOUT = 60.0
# mount(8) messages that mean this host may not loop-mount at all (a container).
_HOST_REFUSALS = ("permission denied", "operation not permitted", "only root")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)


def _detach_loops(image: Path) -> None:
    listed = _run("losetup", "-j", str(image))
    for line in listed.stdout.splitlines():
        _run("losetup", "-d", line.split(":", 1)[0])


@pytest.fixture
def reflink_mount(tmp_path: Path) -> Iterator[Path]:
    """A fresh XFS with reflink=1 on a loop device, always unmounted afterwards."""
    if shutil.which("mkfs.xfs") is None:
        pytest.skip("mkfs.xfs is not installed (xfsprogs, see scripts/setup-host.sh)")
    image = tmp_path / "xfs.img"
    with open(image, "wb") as file:
        file.truncate(IMAGE_SIZE)
    made = _run("mkfs.xfs", "-q", "-m", "reflink=1", str(image))
    assert made.returncode == 0, made.stderr
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mounted = _run("mount", "-o", "loop", str(image), str(mountpoint))
    if mounted.returncode != 0:
        _detach_loops(image)
        reason = mounted.stderr.strip()
        if any(refusal in reason.lower() for refusal in _HOST_REFUSALS):
            pytest.skip(f"this host cannot loop-mount XFS: {reason}")
        pytest.fail(f"mounting the reflink XFS image failed: {reason}")
    try:
        yield mountpoint
    finally:
        unmounted = _run("umount", str(mountpoint))
        _detach_loops(image)
        assert unmounted.returncode == 0, unmounted.stderr


def _write_source(path: Path, size: int) -> None:
    """Distinct data in every other MiB, holes between."""
    with open(path, "wb") as file:
        file.truncate(size)
        for index, offset in enumerate(range(0, size, 2 * MiB)):
            file.seek(offset)
            file.write(hashlib.sha256(b"%d" % index).digest() * (min(MiB, size - offset) // 32))
        os.fsync(file.fileno())


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def _extents(path: Path) -> list[tuple[int, int]]:
    with open(path, "rb") as file:
        return data_extents(file.fileno(), path.stat().st_size)


def _shared_flags(path: Path) -> list[bool]:
    """Per extent of ``path``, whether ``filefrag -v`` marks it shared."""
    result = _run("filefrag", "-v", str(path))
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert rows, result.stdout
    return ["shared" in row.rsplit(":", 1)[-1] for row in rows]


def _free_bytes(mountpoint: Path) -> int:
    stat = os.statvfs(mountpoint)
    return stat.f_bavail * stat.f_frsize


def test_clone_on_xfs_takes_the_reflink_path(reflink_mount: Path) -> None:
    pool = VolumePool(reflink_mount / "volumes")
    source = pool.create("default", "golden", VOLUME_CAPACITY)
    target = pool.create("default", "copy", VOLUME_CAPACITY)
    _write_source(source.disk_path, source.usable_size)
    source_digest = _digest(source.disk_path)
    free_before = _free_bytes(reflink_mount)
    reports: list[tuple[int, int]] = []

    method = copy_disk(
        source.disk_path,
        target.partial_path,
        target.usable_size,
        lambda done, total: reports.append((done, total)),
    )

    assert method == "reflink"
    clone = target.partial_path
    assert clone.stat().st_size == target.usable_size
    assert _digest(clone) == source_digest
    assert _extents(clone) == _extents(source.disk_path)  # holes stayed holes
    assert all(_shared_flags(clone))
    assert all(_shared_flags(source.disk_path))
    # About 30 MiB of data was cloned, yet almost no space was used.
    free_after = _free_bytes(reflink_mount)
    assert free_before - free_after < MiB
    assert reports[-1] == (source.usable_size, source.usable_size)

    # Copy on write: changing the clone leaves the source untouched.
    with open(clone, "r+b") as file:
        file.write(b"\xa5" * 4096)
        file.flush()
        os.fsync(file.fileno())
    assert _digest(source.disk_path) == source_digest
    assert _digest(clone) != source_digest
    assert not _shared_flags(clone)[0]  # the rewritten block got its own extent
