"""Every format and compression, made with the real tools, equals a direct ``qemu-img convert``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cdi import ImportRequest, ImportSettings, MiB, SourceSpec, VolumePool, run_import
from tests.cdi.conftest import compress, convert, qemu_img, same_disk, sparse_blocks
from tests.support.http_server import FileServer

FORMATS: dict[str, tuple[str, ...]] = {
    "raw": ("raw",),
    "qcow2": ("qcow2",),
    "qcow2-zlib": ("qcow2", "-c"),
    "qcow2-zstd": ("qcow2", "-c", "-o", "compression_type=zstd"),
    "qcow2-4k-v2": ("qcow2", "-o", "cluster_size=4096,compat=0.10"),
    "vmdk": ("vmdk",),
    "vmdk-stream": ("vmdk", "-o", "subformat=streamOptimized"),
    "vdi": ("vdi",),
    "vhd": ("vpc",),
    "vhdx": ("vhdx",),
}


def build(base: Path, variant: str, compression: str | None) -> tuple[Path, Path]:
    """(image to import, raw image it must equal)."""
    fmt, *extra = FORMATS[variant]
    image = base if fmt == "raw" else convert(base, fmt, base.with_name(f"{variant}.img"), *extra)
    expected = convert(image, "raw", base.with_name(f"{variant}.expected.raw"))
    if compression:
        image = compress(image, compression)
    return image, expected


async def _import(pool: VolumePool, spec: SourceSpec, settings: ImportSettings, name: str = "d"):  # type: ignore[no-untyped-def]
    return await run_import(pool, ImportRequest("ns", name, 64 * MiB, spec), settings=settings)


@pytest.mark.parametrize("compression", [None, "gz", "xz", "zst", "bz2"])
@pytest.mark.parametrize("variant", sorted(FORMATS))
async def test_http_every_format_and_compression(
    http_server: FileServer,
    pool: VolumePool,
    settings: ImportSettings,
    base: Path,
    variant: str,
    compression: str | None,
) -> None:
    image, expected = build(base, variant, compression)
    (http_server.root / image.name).write_bytes(image.read_bytes())
    spec = SourceSpec(kind="http", url=http_server.url(image.name))
    result = await _import(pool, spec, settings)
    assert same_disk(expected, result.volume)
    assert result.format == FORMATS[variant][0]
    assert result.volume.disk_path.stat().st_size == result.volume.usable_size
    assert sorted(p.name for p in result.volume.directory.iterdir()) == [
        ".lock", "disk.img", "volume.json",
    ]  # fmt: skip


@pytest.mark.parametrize("variant", ["raw", "qcow2", "qcow2-zlib", "vmdk", "vhdx"])
async def test_local_file_every_format(
    pool: VolumePool, settings: ImportSettings, base: Path, variant: str
) -> None:
    image, expected = build(base, variant, None)
    result = await _import(pool, SourceSpec(kind="file", path=image), settings)
    assert same_disk(expected, result.volume)


async def test_zero_runs_become_holes(
    http_server: FileServer, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    image, _ = build(base, "qcow2", None)
    (http_server.root / "d.qcow2").write_bytes(image.read_bytes())
    result = await _import(pool, SourceSpec(kind="http", url=http_server.url("d.qcow2")), settings)
    # Two thirds of the 4 MiB image hold data; the 60 MiB disk is otherwise holes.
    assert sparse_blocks(result.volume.disk_path) * 512 <= 3 * MiB
    assert result.bytes_written <= 3 * MiB


async def test_qcow2_fetches_only_allocated_clusters(
    http_server: FileServer, pool: VolumePool, settings: ImportSettings, tmp_path: Path
) -> None:
    # 4 MiB written, 3 MiB of it discarded: the file still holds 4.3 MB, one is referenced.
    image = tmp_path / "holey.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "8M")
    subprocess.run(
        ["qemu-io", "-c", "write -P 0xab 0 4M", "-c", "discard 0 3M", str(image)],
        check=True,
        capture_output=True,
    )
    expected = convert(image, "raw", tmp_path / "holey.raw")
    (http_server.root / "holey.qcow2").write_bytes(image.read_bytes())
    url = http_server.url("holey.qcow2")
    result = await _import(pool, SourceSpec(kind="http", url=url), settings)
    assert same_disk(expected, result.volume)
    fetched = sum(r.bytes_sent for r in http_server.log if r.method == "GET")
    assert image.stat().st_size > 4 * MiB
    assert fetched < 3 * MiB // 2


async def test_iso_is_imported_as_raw(
    http_server: FileServer, pool: VolumePool, settings: ImportSettings, tmp_path: Path
) -> None:
    iso = tmp_path / "cd.iso"
    data = bytearray(2 * MiB)
    data[0x8001:0x8006] = b"CD001"
    data[0x9000:0x9010] = b"some-iso-content"
    iso.write_bytes(bytes(data))
    (http_server.root / "cd.iso").write_bytes(bytes(data))
    result = await _import(pool, SourceSpec(kind="http", url=http_server.url("cd.iso")), settings)
    assert result.format == "raw"
    assert same_disk(iso, result.volume)


async def test_blank_is_sparse_and_sized(pool: VolumePool, settings: ImportSettings) -> None:
    result = await _import(pool, SourceSpec(kind="blank"), settings)
    assert result.volume.disk_path.stat().st_size == 60 * MiB
    assert sparse_blocks(result.volume.disk_path) == 0


async def test_progress_totals_are_real_bytes(
    http_server: FileServer, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    from dataclasses import replace

    from cdi import Progress

    image, _ = build(base, "qcow2", None)
    (http_server.root / "d.qcow2").write_bytes(image.read_bytes())
    events: list[Progress] = []
    result = await run_import(
        pool,
        ImportRequest("ns", "d", 64 * MiB, SourceSpec(kind="http", url=http_server.url("d.qcow2"))),
        on_progress=events.append,
        settings=replace(settings, progress_interval=0),
    )
    phases = [e.phase for e in events]
    assert phases[0] == "probe"
    assert phases[-1] == "done"
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == [
        "probe", "transfer", "resize", "verify", "done",
    ]  # fmt: skip
    transfer = [e for e in events if e.phase == "transfer" and e.source_bytes_total]
    total = transfer[-1].source_bytes_total
    assert total is not None
    assert total <= image.stat().st_size < result.virtual_size
    percents = [e.percent for e in transfer]
    assert percents == sorted(percents)
    assert events[-1].cdi_progress == "100.0%"


async def test_preallocation_allocates_the_whole_disk(
    pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    request = ImportRequest(
        "ns", "d", 16 * MiB, SourceSpec(kind="file", path=base), preallocation=True
    )
    result = await run_import(pool, request, settings=settings)
    assert sparse_blocks(result.volume.disk_path) * 512 >= result.volume.usable_size
