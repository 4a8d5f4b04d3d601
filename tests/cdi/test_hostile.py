"""Hostile and broken inputs: refused with a clear message, nothing left behind."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from cdi import (
    Checksum,
    ChecksumMismatch,
    ImageTooLarge,
    ImportError,
    ImportRequest,
    ImportSettings,
    InvalidImage,
    MiB,
    SourceSpec,
    UnsafeImage,
    UnsupportedFormat,
    VolumePool,
    run_import,
)
from tests.cdi.conftest import convert, leftovers, qemu_img
from tests.support.http_server import FileServer


def backing_file(tmp: Path, base: Path) -> Path:
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(tmp / "x.qcow2"))
    return tmp / "x.qcow2"


def external_data_file(tmp: Path, base: Path) -> Path:
    opts = f"data_file={tmp / 'data.raw'},data_file_raw=on"
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts, str(tmp / "x.qcow2"), "4M")
    return tmp / "x.qcow2"


def oversized(tmp: Path, base: Path) -> Path:
    qemu_img("create", "-q", "-f", "qcow2", str(tmp / "x.qcow2"), "1G")
    return tmp / "x.qcow2"


def oversized_raw(tmp: Path, base: Path) -> Path:
    (tmp / "x.raw").write_bytes(b"")
    with (tmp / "x.raw").open("r+b") as handle:
        handle.truncate(80 * MiB)
    return tmp / "x.raw"


def truncated(tmp: Path, base: Path) -> Path:
    data = convert(base, "qcow2", tmp / "full.qcow2").read_bytes()
    (tmp / "x.qcow2").write_bytes(data[: len(data) // 2])
    return tmp / "x.qcow2"


def vmdk_outside_extent(tmp: Path, base: Path) -> Path:
    (tmp / "x.vmdk").write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n\nRW 8192 FLAT "/etc/passwd" 0\n'
    )
    return tmp / "x.vmdk"


def gzip_bomb(tmp: Path, base: Path) -> Path:
    with gzip.open(tmp / "x.img.gz", "wb", compresslevel=9) as out:
        chunk = b"\x01" * MiB
        for _ in range(200):
            out.write(chunk)
    return tmp / "x.img.gz"


def qemu_img_pbkdf(*args: str) -> None:
    """qemu-img create for LUKS; its PBKDF timing sometimes fails on a busy machine."""
    for _ in range(4):
        try:
            qemu_img(*args)
            return
        except subprocess.CalledProcessError as exc:
            if b"accurate CPU usage" not in exc.stderr:
                raise
    qemu_img(*args)


def encrypted(tmp: Path, base: Path) -> Path:
    qemu_img_pbkdf(
        "create", "-q", "-f", "qcow2", "--object", "secret,id=s0,data=123456",
        "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
        str(tmp / "x.qcow2"), "4M",
    )  # fmt: skip
    return tmp / "x.qcow2"


def luks(tmp: Path, base: Path) -> Path:
    qemu_img_pbkdf(
        "create", "-q", "-f", "luks", "--object", "secret,id=s0,data=123456",
        "-o", "key-secret=s0,iter-time=10", str(tmp / "x.img"), "4M",
    )  # fmt: skip
    return tmp / "x.img"


def extended_l2(tmp: Path, base: Path) -> Path:
    return convert(base, "qcow2", tmp / "x.qcow2", "-o", "extended_l2=on,cluster_size=128k")


CASES = [
    (backing_file, UnsafeImage, "backing file"),
    (external_data_file, UnsafeImage, "external data file"),
    (oversized, ImageTooLarge, r"1 GiB \(1073741824 bytes\).*60 MiB \(62914560 bytes\)"),
    (oversized_raw, ImageTooLarge, "80 MiB.*60 MiB"),
    (truncated, InvalidImage, "truncated"),
    (vmdk_outside_extent, UnsafeImage, "monolithicFlat"),
    (gzip_bomb, ImageTooLarge, "expands past 60 MiB"),
    (encrypted, (UnsupportedFormat, UnsafeImage), "encrypt"),
    (luks, UnsupportedFormat, "luks"),
    (extended_l2, UnsupportedFormat, "extended L2"),
]


@pytest.mark.parametrize(("make", "error", "pattern"), CASES, ids=[c[0].__name__ for c in CASES])
async def test_hostile_input_is_refused(
    http_server: FileServer,
    pool: VolumePool,
    settings: ImportSettings,
    base: Path,
    tmp_path: Path,
    make: object,
    error: type[ImportError],
    pattern: str,
) -> None:
    image = make(tmp_path, base)  # type: ignore[operator]
    (http_server.root / image.name).write_bytes(image.read_bytes())
    source = SourceSpec(kind="http", url=http_server.url(image.name))
    with pytest.raises(error, match=pattern) as info:
        await run_import(pool, ImportRequest("ns", "d", 64 * MiB, source), settings=settings)
    assert image.name in str(info.value)
    assert leftovers(pool.root / "ns" / "d") == []


async def test_oversized_qcow2_is_refused_before_transfer(
    http_server: FileServer, pool: VolumePool, settings: ImportSettings, tmp_path: Path, base: Path
) -> None:
    image = oversized(tmp_path, base)
    (http_server.root / image.name).write_bytes(image.read_bytes())
    source = SourceSpec(kind="http", url=http_server.url(image.name))
    with pytest.raises(ImageTooLarge):
        await run_import(pool, ImportRequest("ns", "d", 64 * MiB, source), settings=settings)
    assert [r.method for r in http_server.log] == ["HEAD", "GET"]  # the probe only


@pytest.mark.parametrize("variant", ["raw", "qcow2"])
async def test_wrong_checksum_is_final_and_leaves_no_disk(
    http_server: FileServer,
    pool: VolumePool,
    settings: ImportSettings,
    base: Path,
    tmp_path: Path,
    variant: str,
) -> None:
    image = base if variant == "raw" else convert(base, "qcow2", tmp_path / "d.qcow2")
    (http_server.root / image.name).write_bytes(image.read_bytes())
    wrong = Checksum.parse("sha256:" + "ab" * 32)
    source = SourceSpec(kind="http", url=http_server.url(image.name), checksum=wrong)
    with pytest.raises(ChecksumMismatch, match="expected sha256:abab") as info:
        await run_import(pool, ImportRequest("ns", "d", 64 * MiB, source), settings=settings)
    assert image.name in str(info.value)
    assert leftovers(pool.root / "ns" / "d") == []


async def test_qemu_img_runs_under_limits(
    http_server: FileServer, pool: VolumePool, settings: ImportSettings, base: Path, tmp_path: Path
) -> None:
    from dataclasses import replace

    image = convert(base, "qcow2", tmp_path / "d.qcow2")
    (http_server.root / "d.qcow2").write_bytes(image.read_bytes())
    source = SourceSpec(kind="http", url=http_server.url("d.qcow2"))
    starved = replace(settings, qemu_img_memory_bytes=4 * MiB)  # too little to even start
    with pytest.raises((UnsafeImage, InvalidImage)):
        await run_import(pool, ImportRequest("ns", "d", 64 * MiB, source), settings=starved)
    assert leftovers(pool.root / "ns" / "d") == []
