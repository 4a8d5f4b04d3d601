"""pvc clone: byte-equal, holes preserved, refused while the source is open for writing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cdi.service.clone import allocated_bytes, copy_disk, data_extents
from tests.cdi.service.conftest import MiB, Service, raw_equal, write_sparse_raw


def _ready_volume(service: Service, name: str, size: int) -> Path:
    """A finished source volume, as an earlier import would leave it."""
    volume = service.pool.create("default", name, 64 * MiB)
    write_sparse_raw(volume.disk_path, size, seed=7)
    return volume.disk_path


def _clone_request(target: str = "copy") -> dict[str, object]:
    return {
        "source": {"pvc": {"namespace": "default", "name": "golden"}},
        "target": {"namespace": "default", "name": target},
        "size": "64Mi",
    }


async def test_clone_is_byte_equal_and_keeps_holes(service: Service) -> None:
    source = _ready_volume(service, "golden", 24 * MiB)
    job = await service.create(_clone_request())
    final = await service.wait(job["id"])
    assert final["phase"] == "Succeeded", final
    target = service.pool.get("default", "copy")
    assert target.state() == "Ready"
    assert target.disk_path.stat().st_size == target.usable_size
    assert raw_equal(source, target.disk_path)
    # Same data runs, so the same allocation: holes were not filled in (ext4 may
    # add a block of extent-tree metadata for the larger file).
    assert _extents(target.disk_path) == _extents(source)
    assert 0 <= allocated_bytes(target.disk_path) - allocated_bytes(source) <= 64 * 1024
    assert allocated_bytes(target.disk_path) < 13 * MiB


def _extents(path: Path) -> list[tuple[int, int]]:
    with open(path, "rb") as file:
        return data_extents(file.fileno(), path.stat().st_size)


async def test_clone_refuses_a_source_open_for_writing(service: Service) -> None:
    source = _ready_volume(service, "golden", 4 * MiB)
    writer = os.open(source, os.O_RDWR)
    try:
        job = await service.create(_clone_request())
        final = await service.wait(job["id"])
    finally:
        os.close(writer)
    assert final["phase"] == "Failed"
    assert final["reason"] == "CloneSourceInUse"
    assert "open for writing" in final["message"]
    with pytest.raises(Exception, match="does not exist"):
        service.pool.get("default", "copy")


async def test_clone_of_a_missing_or_unfinished_source_fails_cleanly(service: Service) -> None:
    job = await service.create(_clone_request())
    final = await service.wait(job["id"])
    assert final["phase"] == "Failed"
    assert final["reason"] == "VolumeNotFound"
    service.pool.create("default", "golden", 64 * MiB)
    job = await service.create(_clone_request("copy2"))
    final = await service.wait(job["id"])
    assert final["reason"] == "CloneSourceNotReady"


def test_sparse_copy_walks_only_data_extents(tmp_path: Path) -> None:
    source = write_sparse_raw(tmp_path / "src.raw", 8 * MiB, seed=3)
    seen: list[int] = []
    method = copy_disk(source, tmp_path / "dst.raw", 8 * MiB, lambda done, total: seen.append(done))
    assert method in ("reflink", "sparse")
    with open(source, "rb") as file:
        extents = data_extents(file.fileno(), 8 * MiB)
    assert extents == [(0, MiB), (2 * MiB, 3 * MiB), (4 * MiB, 5 * MiB), (6 * MiB, 7 * MiB)]
    assert (tmp_path / "dst.raw").read_bytes() == source.read_bytes()
    assert allocated_bytes(tmp_path / "dst.raw") == allocated_bytes(source)
