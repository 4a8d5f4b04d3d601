"""Push then pull through the real docker-registry: byte-identical disks, both formats."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from containerdisk import Reference, RegistryClient, RegistrySettings
from tests.containerdisk.conftest import MiB

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("fmt", "compression", "disk_format"),
    [
        ("containerdisk", "gzip", "keep"),
        ("containerdisk", "zstd", "keep"),
        ("containerdisk", "none", "keep"),
        ("containerdisk", "gzip", "qcow2"),
        ("artifact", "zstd", None),
        ("artifact", "none", None),
    ],
    ids=["cd-gzip-raw", "cd-zstd-raw", "cd-none-raw", "cd-gzip-qcow2", "art-zstd", "art-none"],
)
async def test_push_then_pull_is_byte_identical(
    registry, raw_disk: Callable[..., Path], tmp_path: Path, fmt, compression, disk_format
) -> None:
    disk = raw_disk(9 * MiB + 123 * 512)
    ref = Reference.parse(f"{registry.host}/rt/{fmt}:{compression}")
    settings = RegistrySettings(chunk_size=4 * MiB, segment_size=4 * MiB)
    async with RegistryClient(settings=settings) as client:
        pushed = await client.push_disk(
            disk, ref, format=fmt, compression=compression, disk_format=disk_format
        )
        out = tmp_path / "pulled.img"
        digest = await client.pull_disk(ref, out)
    assert digest == pushed.manifest_digest
    if pushed.disk_format == "raw":
        assert out.read_bytes() == disk.read_bytes()
    else:
        subprocess.run(["qemu-img", "compare", "-q", str(disk), str(out)], check=True, timeout=60)


async def test_multi_arch_index_picks_the_platform(
    registry, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    amd = raw_disk(2 * MiB, name="amd.raw", seed=1)
    arm = raw_disk(2 * MiB, name="arm.raw", seed=2)
    repo = f"{registry.host}/multi/disk"
    async with RegistryClient() as client:
        await client.push_disk(amd, f"{repo}:amd64", platform="linux/amd64", disk_format="keep")
        await client.push_disk(arm, f"{repo}:arm64", platform="linux/arm64", disk_format="keep")
        index_digest = await client.push_index(f"{repo}:v1", [f"{repo}:amd64", f"{repo}:arm64"])
        image = await client.resolve(f"{repo}:v1", platform="linux/arm64")
        assert image.index_digest == index_digest
        await client.pull_disk(f"{repo}:v1", tmp_path / "arm.img", platform="linux/arm64")
        await client.pull_disk(f"{repo}:v1", tmp_path / "amd.img", platform="linux/amd64")
    assert (tmp_path / "arm.img").read_bytes() == arm.read_bytes()
    assert (tmp_path / "amd.img").read_bytes() == amd.read_bytes()
    inspect = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{repo}:v1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    platforms = [m["platform"]["architecture"] for m in json.loads(inspect.stdout)["manifests"]]
    assert platforms == ["amd64", "arm64"]


@pytest.mark.parametrize("fmt", ["containerdisk", "artifact"])
async def test_chunks_resume_from_an_offset(
    registry, raw_disk: Callable[..., Path], fmt: str
) -> None:
    disk = raw_disk(6 * MiB, dense_fraction=1.0)
    ref = f"{registry.host}/resume/{fmt}:v1"
    settings = RegistrySettings(segment_size=2 * MiB)
    start = 4 * MiB + 100
    async with RegistryClient(settings=settings) as client:
        await client.push_disk(disk, ref, format=fmt, disk_format="keep", compression="none")
        await asyncio.to_thread(registry.wait_for_request, lambda r: "manifests" in r.path)
        before = len(registry.requests())
        async with client.open_disk(ref) as opened:
            tail = b"".join([c async for c in opened.chunks(start=start)])
    assert tail == disk.read_bytes()[start:]
    blob_gets = [
        r for r in registry.requests()[before:] if r.method == "GET" and "/blobs/" in r.path
    ]
    # An artifact fetches only the segment holding the offset; a containerDisk's one layer.
    assert len(blob_gets) == 1
