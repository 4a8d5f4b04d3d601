"""Registry sources against the real docker-registry: containerDisks, artifacts, auth, TLS."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import containerdisk
from cdi import (
    AuthFailed,
    ChecksumMismatch,
    Credentials,
    ImportRequest,
    ImportSettings,
    MiB,
    SourceNotFound,
    SourceSpec,
    VolumePool,
    run_import,
)
from tests.cdi.conftest import leftovers, same_disk
from tests.support.registry import Registry, write_oci_layout


async def push(registry: Registry, disk: Path, repo: str, **options: object) -> str:
    ref = f"{registry.host}/{repo}:v1"
    async with containerdisk.RegistryClient(
        username=registry.username, password=registry.password, ca_file=registry.ca_file
    ) as client:
        await client.push_disk(disk, ref, **options)  # type: ignore[arg-type]
    return f"docker://{ref}"


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"disk_format": "keep"},
        {"format": "artifact"},
        {"format": "artifact", "compression": "none"},
    ],
    ids=["containerdisk-qcow2", "containerdisk-raw", "artifact-zstd", "artifact-plain"],
)
async def test_registry_disk_kinds(
    registry: Registry,
    pool: VolumePool,
    settings: ImportSettings,
    base: Path,
    options: dict[str, object],
) -> None:
    url = await push(registry, base, "disks/base", **options)
    spec = SourceSpec(kind="registry", url=url)
    result = await run_import(pool, ImportRequest("ns", "d", 64 * MiB, spec), settings=settings)
    assert same_disk(base, result.volume)


async def test_containerdisk_built_by_skopeo(
    registry: Registry, pool: VolumePool, settings: ImportSettings, base: Path, tmp_path: Path
) -> None:
    layout = write_oci_layout(tmp_path / "layout", {"disk/disk.img": base.read_bytes()})
    subprocess.run(
        ["skopeo", "copy", *registry.skopeo_flags("dest"), f"oci:{layout.path}:v1",
         f"docker://{registry.host}/skopeo/disk:v1"],
        check=True, capture_output=True,
    )  # fmt: skip
    spec = SourceSpec(kind="registry", url=f"docker://{registry.host}/skopeo/disk:v1")
    result = await run_import(pool, ImportRequest("ns", "d", 64 * MiB, spec), settings=settings)
    assert same_disk(base, result.volume)


async def test_registry_auth(
    registry_auth: Registry, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    url = await push(registry_auth, base, "private/disk")
    good = Credentials(username=registry_auth.username, password=registry_auth.password)
    spec = SourceSpec(kind="registry", url=url, credentials=good)
    result = await run_import(pool, ImportRequest("ns", "d", 64 * MiB, spec), settings=settings)
    assert same_disk(base, result.volume)
    bad = SourceSpec(
        kind="registry", url=url, credentials=Credentials(username="x", password="wrong-pw-123")
    )
    with pytest.raises(AuthFailed) as info:
        await run_import(pool, ImportRequest("ns", "e", 64 * MiB, bad), settings=settings)
    assert "wrong-pw-123" not in str(info.value)
    assert leftovers(pool.root / "ns" / "e") == []


async def test_registry_tls_with_ca(
    registry_tls: Registry, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    url = await push(registry_tls, base, "tls/disk")
    spec = SourceSpec(kind="registry", url=url, ca_file=registry_tls.ca_file)
    result = await run_import(pool, ImportRequest("ns", "d", 64 * MiB, spec), settings=settings)
    assert same_disk(base, result.volume)


async def test_registry_missing_tag_is_final(
    registry: Registry, pool: VolumePool, settings: ImportSettings
) -> None:
    spec = SourceSpec(kind="registry", url=f"docker://{registry.host}/nothing/here:v9")
    with pytest.raises(SourceNotFound):
        await run_import(pool, ImportRequest("ns", "d", 64 * MiB, spec), settings=settings)
    assert leftovers(pool.root / "ns" / "d") == []


async def test_corrupt_layer_is_refused(
    registry: Registry, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    url = await push(registry, base, "bad/disk", format="artifact", compression="none")
    blobs = [p for p in registry.data_dir.rglob("data") if p.is_file()]
    layer = max(blobs, key=lambda p: p.stat().st_size)
    data = bytearray(layer.read_bytes())
    data[100_000] ^= 0xFF
    layer.write_bytes(bytes(data))
    spec = SourceSpec(kind="registry", url=url)
    with pytest.raises(ChecksumMismatch, match="digest"):
        await run_import(pool, ImportRequest("ns", "d", 64 * MiB, spec), settings=settings)
    assert leftovers(pool.root / "ns" / "d") == []
