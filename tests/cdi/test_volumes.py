"""Volumes as targets: block devices (a file standing in), busy volumes, completed volumes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cdi import (
    ImportRequest,
    ImportSettings,
    MiB,
    SourceSpec,
    VolumeBusy,
    VolumeExists,
    VolumePool,
    run_import,
)
from tests.cdi.conftest import convert, same_disk
from tests.support.http_server import Faults, FileServer


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk"])  # native reader; qemu-img convert
async def test_block_volume_is_zeroed_and_filled(
    http_server: FileServer,
    pool: VolumePool,
    settings: ImportSettings,
    base: Path,
    tmp_path: Path,
    fmt: str,
) -> None:
    # A regular file standing in for a block device (no loop devices here); it
    # starts full of 0xff so every byte the import does not write must be zeroed.
    device = tmp_path / "fake-blockdev"
    device.write_bytes(b"\xff" * (16 * MiB))
    volume = pool.create_block("ns", "blk", device)
    assert volume.usable_size == 16 * MiB  # no filesystem overhead on block
    image = convert(base, fmt, tmp_path / f"d.{fmt}")
    (http_server.root / image.name).write_bytes(image.read_bytes())
    source = SourceSpec(kind="http", url=http_server.url(image.name))
    result = await run_import(pool, ImportRequest("ns", "blk", 16 * MiB, source), settings=settings)
    assert result.volume.disk_path == device.resolve()
    assert same_disk(base, result.volume)
    assert device.stat().st_size == 16 * MiB
    assert device.read_bytes()[base.stat().st_size :].count(0) == 16 * MiB - base.stat().st_size
    assert pool.get("ns", "blk").state() == "Ready"
    assert not (volume.directory / "disk.img").exists()


async def test_completed_volume_is_not_overwritten(
    pool: VolumePool, settings: ImportSettings
) -> None:
    request = ImportRequest("ns", "d", 8 * MiB, SourceSpec(kind="blank"))
    await run_import(pool, request, settings=settings)
    with pytest.raises(VolumeExists, match="already holds"):
        await run_import(pool, request, settings=settings)


async def test_second_import_into_a_busy_volume_is_refused(
    http_server: FileServer, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    (http_server.root / "d.raw").write_bytes(base.read_bytes())
    http_server.set_faults("d.raw", Faults(stall_seconds=0.5, stall_times=1))
    source = SourceSpec(kind="http", url=http_server.url("d.raw"))
    request = ImportRequest("ns", "d", 64 * MiB, source)
    started = asyncio.Event()
    first = asyncio.create_task(
        run_import(pool, request, on_progress=lambda _p: started.set(), settings=settings),
        name="first-import",
    )
    await asyncio.wait_for(started.wait(), 10)
    with pytest.raises(VolumeBusy):
        await run_import(pool, request, settings=settings)
    result = await asyncio.wait_for(first, 30)
    assert same_disk(base, result.volume)


def test_discard_partial_keeps_the_volume(pool: VolumePool) -> None:
    volume = pool.create("ns", "keep", 8 * MiB)
    assert not volume.made_by_import()
    volume.partial_path.write_bytes(b"half")
    volume.journal_path.write_text("{}")
    (volume.directory / "import.probe.json").write_text("{}")
    volume.workdir.mkdir()
    (volume.workdir / "scratch.img").write_bytes(b"x")
    pool.discard_partial("ns", "keep")
    kept = pool.get("ns", "keep")
    assert kept.capacity == 8 * MiB
    assert kept.state() == "Empty"
    assert [p.name for p in kept.directory.iterdir()] == ["volume.json"]
    assert pool.create("ns", "made", 8 * MiB, made_by_import=True).made_by_import()
