"""HTTP(S) behaviour against the real file server: ranges, redirects, auth, TLS, faults."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from cdi import (
    AuthFailed,
    Credentials,
    FinalImportError,
    ImportRequest,
    ImportResult,
    ImportSettings,
    MiB,
    SourceNotFound,
    SourceSpec,
    SourceUnavailable,
    VolumePool,
    run_import,
)
from tests.cdi.conftest import leftovers, same_disk
from tests.support.http_server import Faults, FileServer, TlsFileServer


async def fetch(
    pool: VolumePool, settings: ImportSettings, url: str, **spec: object
) -> ImportResult:
    source = SourceSpec(kind="http", url=url, **spec)  # type: ignore[arg-type]
    return await run_import(pool, ImportRequest("ns", "d", 64 * MiB, source), settings=settings)


@pytest.fixture
def served(http_server: FileServer, base: Path) -> str:
    (http_server.root / "disk.img").write_bytes(base.read_bytes())
    return "disk.img"


def gets(server: FileServer) -> list[tuple[int, int | None] | None]:
    return [r.range for r in server.log if r.method == "GET"]


async def test_concurrent_ranges_when_supported(
    http_server: FileServer, served: str, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    result = await fetch(pool, settings, http_server.url(served))
    assert same_disk(base, result.volume)
    ranged = [r for r in http_server.log if r.method == "GET" and r.status == 206]
    assert len(ranged) >= 4  # 1 MiB chunks of a 4 MiB file, plus the header probe
    assert http_server.log[0].method == "HEAD"


@pytest.mark.parametrize(
    "faults",
    [
        Faults(no_range=True),
        Faults(no_head=True),
        Faults(no_content_length=True),
        Faults(no_range=True, no_head=True, no_content_length=True),
    ],
    ids=["no-range", "no-head", "no-content-length", "none-of-them"],
)
async def test_degraded_servers_still_work(
    http_server: FileServer,
    served: str,
    pool: VolumePool,
    settings: ImportSettings,
    base: Path,
    faults: Faults,
) -> None:
    http_server.set_faults(served, faults)
    result = await fetch(pool, settings, http_server.url(served))
    assert same_disk(base, result.volume)
    if faults.no_range:
        assert all(r.status != 206 for r in http_server.log)


async def test_redirects_are_resolved_once(
    http_server: FileServer, served: str, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    result = await fetch(pool, settings, http_server.redirect_url(served, hops=3))
    assert same_disk(base, result.volume)
    redirects = [r for r in http_server.log if r.path.startswith("/__redirect__/")]
    assert len(redirects) == 3  # followed once, by the HEAD; every GET uses the final URL
    assert all(r.path == f"/{served}" for r in http_server.log if r.method == "GET")


async def test_basic_auth_and_wrong_password(
    http_server: FileServer, served: str, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    http_server.require_basic("alice", "correct-horse")
    result = await fetch(
        pool, settings, http_server.url(served),
        credentials=Credentials(username="alice", password="correct-horse"),
    )  # fmt: skip
    assert same_disk(base, result.volume)
    with pytest.raises(AuthFailed) as info:
        await run_import(
            pool,
            ImportRequest(
                "ns",
                "other",
                64 * MiB,
                SourceSpec(
                    kind="http",
                    url=http_server.url(served),
                    credentials=Credentials(username="alice", password="battery-staple"),
                ),
            ),
            settings=settings,
        )
    assert "battery-staple" not in str(info.value)
    assert "401" in str(info.value)


async def test_bearer_token_and_extra_header(
    http_server: FileServer, served: str, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    http_server.require_bearer("tok-123")
    http_server.require_header("X-Tenant", "blue")
    result = await fetch(
        pool, settings, http_server.url(served),
        credentials=Credentials(token="tok-123"), extra_headers=(("X-Tenant", "blue"),),
    )  # fmt: skip
    assert same_disk(base, result.volume)


async def test_tls_with_ca_without_ca_and_insecure(
    https_server: TlsFileServer, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    (https_server.root / "disk.img").write_bytes(base.read_bytes())
    url = https_server.url("disk.img")
    with pytest.raises(FinalImportError, match="TLS"):
        await fetch(pool, settings, url)
    assert leftovers(pool.root / "ns" / "d") == []
    result = await fetch(pool, settings, url, ca_file=https_server.ca_file)
    assert same_disk(base, result.volume)
    pool.delete("ns", "d")
    result = await fetch(pool, settings, url, insecure_skip_verify=True)
    assert same_disk(base, result.volume)


async def test_dropped_connections_resume_without_refetching(
    http_server: FileServer, served: str, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    http_server.set_faults(served, Faults(drop_after=30_000, drop_times=5))
    result = await fetch(pool, settings, http_server.url(served))
    assert same_disk(base, result.volume)
    log = http_server.log
    assert sum(1 for r in log if r.method == "GET" and not r.completed) == 5
    completed = Counter(r.range for r in log if r.method == "GET" and r.completed)
    assert all(count == 1 for count in completed.values()), completed


async def test_dropped_single_stream_restarts_and_completes(
    http_server: FileServer, served: str, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    http_server.set_faults(served, Faults(no_range=True, drop_after=1_000_000, drop_times=2))
    result = await fetch(pool, settings, http_server.url(served))
    assert same_disk(base, result.volume)


@pytest.mark.parametrize("status", [503, 429, 408, 500])
async def test_transient_statuses_are_retried(
    http_server: FileServer,
    served: str,
    pool: VolumePool,
    settings: ImportSettings,
    base: Path,
    status: int,
) -> None:
    http_server.set_faults(served, Faults(fail_status=status, fail_times=3, retry_after=0))
    result = await fetch(pool, settings, http_server.url(served))
    assert same_disk(base, result.volume)


async def test_retries_are_bounded(
    http_server: FileServer, served: str, pool: VolumePool, settings: ImportSettings
) -> None:
    http_server.set_faults(served, Faults(fail_status=503, fail_times=100))
    with pytest.raises(SourceUnavailable, match="503"):
        await fetch(pool, replace(settings, max_retries=2), http_server.url(served))
    assert len(http_server.log) == 3


async def test_retry_after_is_honoured(
    http_server: FileServer, served: str, pool: VolumePool, settings: ImportSettings
) -> None:
    import time

    http_server.set_faults(served, Faults(fail_status=429, fail_times=1, retry_after=1))
    started = time.monotonic()
    await fetch(pool, settings, http_server.url(served))
    assert time.monotonic() - started >= 0.95


async def test_stall_is_retried(
    http_server: FileServer, served: str, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    http_server.set_faults(served, Faults(stall_seconds=2.0, stall_times=1))
    result = await fetch(pool, replace(settings, read_timeout=0.5), http_server.url(served))
    assert same_disk(base, result.volume)


@pytest.mark.parametrize("status", [404, 410])
async def test_missing_source_is_final_and_leaves_nothing(
    http_server: FileServer, pool: VolumePool, settings: ImportSettings, status: int
) -> None:
    url = http_server.url("nope.img") + "?X-Amz-Signature=topsecretsig&X-Amz-Credential=AKIA"
    if status == 410:
        (http_server.root / "nope.img").write_bytes(b"x")
        http_server.set_faults("nope.img", Faults(fail_status=410, fail_times=10))
    with pytest.raises(SourceNotFound) as info:
        await fetch(pool, settings, url)
    message = str(info.value)
    assert "nope.img" in message
    assert "topsecretsig" not in message
    assert "AKIA" not in message
    assert leftovers(pool.root / "ns" / "d") == []
    assert len(http_server.log) == 1  # final: never retried


async def test_secrets_stay_out_of_logs_and_errors(
    http_server: FileServer,
    served: str,
    pool: VolumePool,
    settings: ImportSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    http_server.require_basic("carol", "pa55-word-x")
    url = http_server.url(served) + "?X-Amz-Signature=sig-value-y"
    with pytest.raises(AuthFailed) as info:
        await fetch(
            pool, settings, url, credentials=Credentials(username="carol", password="nope-z")
        )
    text = caplog.text + str(info.value)
    for secret in ("pa55-word-x", "nope-z", "sig-value-y"):
        assert secret not in text


async def test_dropped_compressed_stream_resumes_at_its_offset(
    http_server: FileServer, pool: VolumePool, settings: ImportSettings, base: Path
) -> None:
    from tests.cdi.conftest import compress

    packed = compress(base, "xz")
    (http_server.root / "d.img.xz").write_bytes(packed.read_bytes())
    size = packed.stat().st_size
    http_server.set_faults("d.img.xz", Faults(drop_after=size // 4, drop_times=3))
    result = await fetch(pool, settings, http_server.url("d.img.xz"))
    assert same_disk(base, result.volume)
    fetched = sum(r.bytes_sent for r in http_server.log if r.method == "GET")
    assert fetched < size + 64 * 1024 + size // 4  # each drop resumed where it stopped
