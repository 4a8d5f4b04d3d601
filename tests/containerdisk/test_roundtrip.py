"""Push then pull through the real docker-registry: byte-identical disks, both formats."""

from __future__ import annotations

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
        import subprocess

        subprocess.run(["qemu-img", "compare", "-q", str(disk), str(out)], check=True, timeout=60)
