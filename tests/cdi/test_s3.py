"""S3 sources against moto's real server: URL forms, formats, checksum, auth, errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cdi import (
    AuthFailed,
    Checksum,
    Credentials,
    ImportRequest,
    ImportSettings,
    MiB,
    SourceNotFound,
    SourceSpec,
    VolumePool,
    run_import,
)
from tests.cdi.conftest import compress, convert, leftovers, same_disk
from tests.support.s3 import S3Server


def keys(server: S3Server) -> Credentials:
    return Credentials(access_key_id=server.access_key, secret_key=server.secret_key)


@pytest.mark.parametrize("variant", ["raw", "qcow2", "qcow2.gz", "vmdk"])
@pytest.mark.parametrize("form", ["path-url", "s3-scheme"])
async def test_s3_formats_and_url_forms(
    s3_server: S3Server,
    pool: VolumePool,
    settings: ImportSettings,
    base: Path,
    variant: str,
    form: str,
) -> None:
    fmt = variant.split(".")[0]
    image = base if fmt == "raw" else convert(base, fmt, base.with_name(f"d.{fmt}"))
    if variant.endswith(".gz"):
        image = compress(image, "gz")
    s3_server.create_bucket("disks")
    s3_server.put_object("disks", f"images/{image.name}", image.read_bytes())
    if form == "path-url":
        spec = SourceSpec(
            kind="s3", url=f"{s3_server.endpoint_url}/disks/images/{image.name}",
            credentials=keys(s3_server),
        )  # fmt: skip
    else:
        spec = SourceSpec(
            kind="s3", url=f"s3://disks/images/{image.name}", endpoint_url=s3_server.endpoint_url,
            region=s3_server.region, credentials=keys(s3_server),
        )  # fmt: skip
    result = await run_import(pool, ImportRequest("ns", "d", 64 * MiB, spec), settings=settings)
    assert same_disk(base, result.volume)


async def test_s3_checksum_and_wrong_checksum(
    s3_server: S3Server, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    s3_server.create_bucket("disks")
    s3_server.put_object("disks", "d.raw", base.read_bytes())
    good = Checksum("sha512", hashlib.sha512(base.read_bytes()).hexdigest())
    url = f"{s3_server.endpoint_url}/disks/d.raw"
    spec = SourceSpec(kind="s3", url=url, checksum=good, credentials=keys(s3_server))
    result = await run_import(pool, ImportRequest("ns", "d", 64 * MiB, spec), settings=settings)
    assert result.checksum == str(good)


async def test_s3_signed_requests_with_real_keys(
    s3_server_auth: S3Server, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    s3_server_auth.create_bucket("disks")
    s3_server_auth.put_object("disks", "d.raw", base.read_bytes())
    url = f"{s3_server_auth.endpoint_url}/disks/d.raw"
    spec = SourceSpec(kind="s3", url=url, credentials=keys(s3_server_auth))
    result = await run_import(pool, ImportRequest("ns", "d", 64 * MiB, spec), settings=settings)
    assert same_disk(base, result.volume)
    wrong = Credentials(access_key_id=s3_server_auth.access_key, secret_key="not-the-secret-xyz")
    bad = SourceSpec(kind="s3", url=url, credentials=wrong)
    with pytest.raises(AuthFailed) as info:
        await run_import(pool, ImportRequest("ns", "e", 64 * MiB, bad), settings=settings)
    assert "not-the-secret-xyz" not in str(info.value)
    assert "disks/d.raw" in str(info.value)
    assert leftovers(pool.root / "ns" / "e") == []


async def test_s3_missing_object_is_final(
    s3_server: S3Server, pool: VolumePool, settings: ImportSettings
) -> None:
    s3_server.create_bucket("disks")
    spec = SourceSpec(kind="s3", url=f"{s3_server.endpoint_url}/disks/missing.img")
    with pytest.raises(SourceNotFound, match=r"missing\.img"):
        await run_import(pool, ImportRequest("ns", "d", 64 * MiB, spec), settings=settings)
    assert leftovers(pool.root / "ns" / "d") == []
