"""Resume: a cancelled or killed import continues where it stopped, fetching only the rest."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from cdi import (
    Checksum,
    Credentials,
    ImportRequest,
    ImportSettings,
    MiB,
    Progress,
    SourceSpec,
    VolumePool,
    run_import,
)
from tests.cdi.conftest import compress, convert, make_base, same_disk
from tests.support.faultproxy import FaultProxy
from tests.support.http_server import Faults, FileServer
from tests.support.s3 import S3Server

REPO = Path(__file__).resolve().parents[2]


def completed_ranges(server: FileServer) -> list[tuple[int, int | None]]:
    return [r.range for r in server.log if r.method == "GET" and r.completed and r.range]


async def cancel_after(
    pool: VolumePool, request: ImportRequest, settings: ImportSettings, limit: int
) -> None:
    """Run an import and cancel it once ``limit`` source bytes have arrived."""
    task: asyncio.Task[object] | None = None

    def watch(p: Progress) -> None:
        if p.source_bytes_read >= limit and task is not None:
            task.cancel()

    task = asyncio.create_task(
        run_import(
            pool, request, on_progress=watch, settings=replace(settings, progress_interval=0)
        ),
        name="import-to-cancel",
    )
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.fixture
def big(http_server: FileServer, tmp_path: Path) -> Path:
    image = make_base(tmp_path / "big.raw", size=8 * MiB, seed=11)
    (http_server.root / "big.raw").write_bytes(image.read_bytes())
    return image


@pytest.mark.parametrize("with_checksum", [False, True], ids=["plain", "checksum"])
async def test_cancelled_import_resumes_fetching_only_the_rest(
    http_server: FileServer,
    pool: VolumePool,
    settings: ImportSettings,
    big: Path,
    with_checksum: bool,
) -> None:
    checksum = (
        Checksum("sha256", hashlib.sha256(big.read_bytes()).hexdigest()) if with_checksum else None
    )
    spec = SourceSpec(kind="http", url=http_server.url("big.raw"), checksum=checksum)
    request = ImportRequest("ns", "d", 64 * MiB, spec)
    one = replace(settings, concurrency=1)
    await cancel_after(pool, request, one, 4 * MiB)
    volume = pool.get("ns", "d")
    assert volume.state() == "Importing"
    assert not volume.disk_path.exists()
    done = json.loads(volume.journal_path.read_text())["done"]
    assert sum(end - start for start, end in done) >= 2 * MiB
    http_server.clear_log()
    result = await run_import(pool, request, settings=one)
    assert result.resumed
    assert same_disk(big, result.volume)
    # No completed byte again, not even the format probe's head (kept beside the journal).
    for first, last in completed_ranges(http_server):
        assert last is not None
        assert not any(start < last + 1 and first < end for start, end in done), (first, last)
    fetched = sum(r.bytes_sent for r in http_server.log if r.method == "GET")
    assert fetched <= 8 * MiB - sum(end - start for start, end in done)
    assert not result.volume.journal_path.exists()
    assert not (result.volume.directory / "import.probe.json").exists()


async def test_changed_source_starts_over(
    http_server: FileServer, pool: VolumePool, settings: ImportSettings, big: Path, tmp_path: Path
) -> None:
    spec = SourceSpec(kind="http", url=http_server.url("big.raw"))
    request = ImportRequest("ns", "d", 64 * MiB, spec)
    await cancel_after(pool, request, replace(settings, concurrency=1), 3 * MiB)
    changed = make_base(tmp_path / "changed.raw", size=8 * MiB, seed=99)
    (http_server.root / "big.raw").write_bytes(changed.read_bytes())
    os.utime(http_server.root / "big.raw", (1_000_000, 1_000_000))
    result = await run_import(pool, request, settings=settings)
    assert not result.resumed
    assert same_disk(changed, result.volume)


def diskplane(data_dir: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    argv = [
        sys.executable, "-m", "controllers.cli", "--data-dir", str(data_dir), "import", url,
        "--volume", "ns/d", "--size", "64Mi", "--chunk-size", "1Mi", "--concurrency", "1", *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_journal(journal: Path, min_bytes: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done = json.loads(journal.read_text())["done"]
            total = sum(end - start for start, end in done)
            if total >= min_bytes:
                return total
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"journal {journal} never recorded {min_bytes} bytes")


def interrupt_when_journalled(
    proc: subprocess.Popen[str], journal: Path, sig: signal.Signals, min_bytes: int
) -> tuple[int, str]:
    """Signal a running ``diskplane import`` once its journal holds ``min_bytes``.

    Returns the journalled bytes and the process's stderr; SIGINT must exit 130.
    """
    try:
        done = wait_for_journal(journal, min_bytes)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
    return done, err


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_process_resumes_when_rerun(
    http_server: FileServer, tmp_path: Path, big: Path, sig: signal.Signals
) -> None:
    # Every GET waits a little so the first run is still busy when it is killed.
    http_server.set_faults("big.raw", Faults(stall_seconds=0.2))
    data_dir = tmp_path / "data"
    proc = diskplane(data_dir, http_server.url("big.raw"))
    journal = data_dir / "volumes" / "ns" / "d" / "import.journal.json"
    done, err = interrupt_when_journalled(proc, journal, sig, 2 * MiB)
    if sig == signal.SIGINT:
        assert "resume" in err
    assert journal.exists()
    http_server.clear_faults()
    http_server.clear_log()
    rerun = diskplane(data_dir, http_server.url("big.raw"))
    out, err = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, err
    assert "resumed" in out
    fetched = sum(r.bytes_sent for r in http_server.log if r.method == "GET")
    assert fetched <= 8 * MiB - done + 64 * 1024
    volume = VolumePool.for_data_dir(data_dir).get("ns", "d")
    assert same_disk(big, volume)


async def test_cancelled_s3_import_resumes_without_reading_the_head_again(
    s3_server: S3Server,
    fault_proxy: Callable[[str], FaultProxy],
    pool: VolumePool,
    settings: ImportSettings,
    tmp_path: Path,
) -> None:
    # Through a logging proxy: the resumed run revalidates the saved probe
    # with one HeadObject and then GETs only the chunks still missing.
    image = make_base(tmp_path / "big.raw", size=8 * MiB, seed=11)
    s3_server.create_bucket("disks")
    s3_server.put_object("disks", "big.raw", image.read_bytes())
    proxy = fault_proxy(s3_server.endpoint_url)
    keys = Credentials(access_key_id=s3_server.access_key, secret_key=s3_server.secret_key)
    spec = SourceSpec(kind="s3", url=f"{proxy.url}/disks/big.raw", credentials=keys)
    request = ImportRequest("ns", "d", 64 * MiB, spec)
    one = replace(settings, concurrency=1)
    await cancel_after(pool, request, one, 4 * MiB)
    done = json.loads(pool.get("ns", "d").journal_path.read_text())["done"]
    done_bytes = sum(end - start for start, end in done)
    proxy.clear_log()
    result = await run_import(pool, request, settings=one)
    assert result.resumed
    assert same_disk(image, result.volume)
    methods = [r.method for r in proxy.log]
    assert methods.count("HEAD") == 1
    assert methods.count("GET") == (8 * MiB - done_bytes) // MiB  # no probe GET


@pytest.mark.parametrize("with_checksum", [False, True], ids=["plain", "checksum"])
async def test_cancelled_qcow2_import_resumes_fetching_only_the_rest(
    http_server: FileServer,
    pool: VolumePool,
    settings: ImportSettings,
    tmp_path: Path,
    with_checksum: bool,
) -> None:
    # With a checksum the hash state is journalled too (cdi/checksum.py), so the
    # rerun continues the hash instead of fetching the hashed prefix again.
    raw = tmp_path / "dense.raw"
    raw.write_bytes(os.urandom(8 * MiB))
    image = convert(raw, "qcow2", tmp_path / "d.qcow2")
    (http_server.root / "d.qcow2").write_bytes(image.read_bytes())
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    spec = SourceSpec(
        kind="http", url=http_server.url("d.qcow2"),
        checksum=Checksum("sha256", digest) if with_checksum else None,
    )  # fmt: skip
    request = ImportRequest("ns", "d", 64 * MiB, spec)
    one = replace(settings, concurrency=1)
    await cancel_after(pool, request, one, 4 * MiB)
    saved = json.loads(pool.get("ns", "d").journal_path.read_text())
    kept = sum(end - start for start, end in saved["done"])
    if with_checksum:
        hashed = saved["hash"]["bytes"]
        kept = sum(min(end, hashed) - start for start, end in saved["done"] if start < hashed)
    assert kept >= 2 * MiB
    http_server.clear_log()
    result = await run_import(pool, request, settings=one)
    assert result.resumed
    assert same_disk(raw, result.volume)
    assert result.checksum == (f"sha256:{digest}" if with_checksum else None)
    fetched = sum(r.bytes_sent for r in http_server.log if r.method == "GET")
    assert fetched <= image.stat().st_size - kept + 256 * 1024  # + header and tables again


@pytest.mark.parametrize(
    ("inner", "checksum"),
    [("raw", False), ("qcow2", False), ("raw", True)],  # into the volume; via scratch
    ids=["raw", "qcow2", "raw-checksum"],
)
def test_killed_gzip_import_resumes_at_a_deflate_block(
    http_server: FileServer, tmp_path: Path, inner: str, checksum: bool
) -> None:
    # The gzip decoder's state (bit offset, 32 KiB window, CRC) is journalled at
    # deflate block boundaries, so the rerun fetches only the compressed rest.
    base = make_base(tmp_path / "big.raw", size=16 * MiB, seed=13)
    image = base if inner == "raw" else convert(base, "qcow2", tmp_path / "big.qcow2")
    packed = compress(image, "gz")
    (http_server.root / packed.name).write_bytes(packed.read_bytes())
    size = packed.stat().st_size
    http_server.set_faults(packed.name, Faults(rate=size // 4))  # about 4 s for the lot
    data_dir = tmp_path / "data"
    journal = data_dir / "volumes" / "ns" / "d" / "import.journal.json"
    digest = hashlib.sha256(packed.read_bytes()).hexdigest()
    extra = ["--checksum", f"sha256:{digest}"] if checksum else []
    proc = diskplane(data_dir, http_server.url(packed.name), *extra)
    done, err = interrupt_when_journalled(proc, journal, signal.SIGKILL, size // 4)
    http_server.clear_faults()
    http_server.clear_log()
    rerun = diskplane(data_dir, http_server.url(packed.name), *extra)
    out, err = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, err
    assert "resumed" in out
    assert same_disk(base, VolumePool.for_data_dir(data_dir).get("ns", "d"))
    fetched = sum(r.bytes_sent for r in http_server.log if r.method == "GET")
    assert fetched <= size - done


async def test_a_gzip_journal_whose_target_is_gone_starts_over_cleanly(
    http_server: FileServer, pool: VolumePool, settings: ImportSettings, tmp_path: Path
) -> None:
    base = make_base(tmp_path / "big.raw", size=16 * MiB, seed=17)
    packed = compress(base, "gz")
    (http_server.root / packed.name).write_bytes(packed.read_bytes())
    spec = SourceSpec(kind="http", url=http_server.url(packed.name))
    request = ImportRequest("ns", "d", 64 * MiB, spec)
    often = replace(settings, journal_interval=0.0)
    await cancel_after(pool, request, often, packed.stat().st_size // 2)
    volume = pool.get("ns", "d")
    assert json.loads(volume.journal_path.read_text())["decoder"]["gzip"]["in_offset"] > 0
    volume.partial_path.unlink()  # what the resume point described is gone
    await cancel_after(pool, request, replace(often, journal_interval=60.0), 1)
    # Cut before its first checkpoint: the old point must not survive to describe
    # the new, barely written partial disk.
    assert json.loads(volume.journal_path.read_text())["done"] == []
    result = await run_import(pool, request, settings=often)
    assert not result.resumed
    assert same_disk(base, result.volume)
