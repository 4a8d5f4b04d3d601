"""vmdk, vdi, vhd and vhdx from a range-capable source convert in place, with no scratch copy.

qemu-img reads the source through the import's read-only NBD export
(``cdi/nbd.py``); these tests show it needs no space beyond the disk itself,
fetches each source byte about once, and reports a dying source as the
source's failure, leaving nothing behind.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from cdi import (
    Checksum,
    ImageTooLarge,
    ImportRequest,
    ImportSettings,
    MiB,
    Progress,
    SourceNotFound,
    SourceSpec,
    SourceUnavailable,
    VolumePool,
    run_import,
)
from cdi.nbd import ChunkCache
from tests.cdi.conftest import convert, same_disk
from tests.support.http_server import Faults, FileServer

FORMATS = {"vmdk": (), "vmdk-stream": ("-o", "subformat=streamOptimized"), "vdi": ()}
FORMATS |= {"vpc": ("-o", "force_size=on"), "vhdx": ()}


def _dense(path: Path, size: int) -> Path:
    """Incompressible data everywhere: the image file is at least the virtual size."""
    path.write_bytes(os.urandom(size))
    return path


@pytest.mark.parametrize("variant", sorted(FORMATS))
async def test_a_full_disk_fits_a_volume_with_no_room_for_a_scratch_copy(
    http_server: FileServer, tmp_path: Path, settings: ImportSettings, variant: str
) -> None:
    # An 8 MiB fully written disk in a volume of exactly 8 MiB (no overhead):
    # a scratch copy of the image file (>= 8 MiB) plus the disk could not fit.
    base = _dense(tmp_path / "base.raw", 8 * MiB)
    fmt = variant.split("-")[0]
    image = convert(base, fmt, tmp_path / f"d.{variant}", *FORMATS[variant])
    assert image.stat().st_size >= 8 * MiB
    (http_server.root / image.name).write_bytes(image.read_bytes())
    pool = VolumePool.for_data_dir(tmp_path / "data", filesystem_overhead=0.0)
    spec = SourceSpec(kind="http", url=http_server.url(image.name))
    result = await run_import(pool, ImportRequest("ns", "d", 8 * MiB, spec), settings=settings)
    assert same_disk(base, result.volume)
    assert result.format == fmt
    gets = [r for r in http_server.log if r.method == "GET"]
    assert all(r.range is not None for r in gets)  # ranged reads, never the whole file
    fetched = sum(r.bytes_sent for r in gets)
    assert fetched <= image.stat().st_size * 1.25  # about once, bar a re-read chunk or two


async def test_with_a_checksum_the_scratch_copy_is_used_and_counted(
    http_server: FileServer, tmp_path: Path, settings: ImportSettings
) -> None:
    # The checksum is over the source bytes in order, which qemu-img does not
    # read in order: that import takes the scratch route and needs the room.
    base = _dense(tmp_path / "base.raw", 8 * MiB)
    image = convert(base, "vdi", tmp_path / "d.vdi")
    (http_server.root / "d.vdi").write_bytes(image.read_bytes())
    pool = VolumePool.for_data_dir(tmp_path / "data", filesystem_overhead=0.0)
    spec = SourceSpec(
        kind="http", url=http_server.url("d.vdi"), checksum=Checksum("sha256", "0" * 64)
    )
    with pytest.raises(ImageTooLarge, match="scratch copy"):
        await run_import(pool, ImportRequest("ns", "d", 8 * MiB, spec), settings=settings)


@pytest.mark.parametrize(
    ("faults", "error"),
    [
        (Faults(fail_status=503, fail_times=1000), SourceUnavailable),
        (Faults(fail_status=404, fail_times=1000), SourceNotFound),
    ],
    ids=["503-forever", "404"],
)
async def test_a_source_that_dies_mid_conversion_is_reported_as_the_source(
    http_server: FileServer,
    pool: VolumePool,
    settings: ImportSettings,
    tmp_path: Path,
    faults: Faults,
    error: type[Exception],
) -> None:
    image = convert(_dense(tmp_path / "base.raw", 16 * MiB), "vhdx", tmp_path / "d.vhdx")
    (http_server.root / "d.vhdx").write_bytes(image.read_bytes())
    spec = SourceSpec(kind="http", url=http_server.url("d.vhdx"))
    request = ImportRequest("ns", "d", 64 * MiB, spec)

    def break_source(progress: Progress) -> None:  # qemu-img is a few MiB in
        if progress.phase == "transfer" and progress.source_bytes_read >= 2 * MiB:
            http_server.set_faults("d.vhdx", faults)

    with pytest.raises(error, match=r"d\.vhdx"):
        await run_import(
            pool, request, on_progress=break_source,
            settings=replace(settings, progress_interval=0.0),
        )  # fmt: skip
    volume = pool.get("ns", "d")
    assert not volume.disk_path.exists()
    if error is SourceNotFound:  # final: nothing partial left to resume
        assert not volume.partial_path.exists()


async def test_chunk_cache_reads_ahead_fetches_once_and_stays_bounded() -> None:
    data = os.urandom(40 * 4096)
    fetched: list[tuple[int, int]] = []
    held: list[int] = []

    async def fetch(start: int, end: int) -> bytes:
        fetched.append((start, end))
        return data[start:end]

    cache = ChunkCache(fetch, len(data), 4096, capacity=6, ahead=2)
    out = bytearray()
    for offset in range(0, len(data), 1000):  # unaligned sequential reads
        out += await cache.read(offset, 1000)
        held.append(len(cache._chunks))
    await cache.aclose()
    assert bytes(out) == data
    assert sorted(fetched) == sorted(set(fetched))  # no chunk fetched twice
    assert len(fetched) == 40
    assert max(held) <= 6


async def test_chunk_cache_does_not_read_ahead_of_metadata_rereads() -> None:
    # qemu's vmdk driver goes back to grain tables near the start as it goes:
    # those reads must not start read-ahead there (it evicted the stream's chunks).
    data = os.urandom(40 * 4096)
    fetched: list[int] = []

    async def fetch(start: int, end: int) -> bytes:
        fetched.append(start)
        return data[start:end]

    cache = ChunkCache(fetch, len(data), 4096, capacity=6, ahead=2)
    for offset in range(0, len(data), 4096):
        assert await cache.read(offset, 4096) == data[offset : offset + 4096]
        if offset % (5 * 4096) == 0:
            assert await cache.read(512, 512) == data[512:1024]  # back to the "table"
    assert cache.cached(len(data) - 100, 100) == data[-100:]
    await cache.aclose()
    assert len(fetched) <= 40 + 8  # the stream once, plus chunk 0 again now and then
