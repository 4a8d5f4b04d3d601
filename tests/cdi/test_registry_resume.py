"""A registry import resumes: after dropped blob downloads within the run, and after a kill.

containerdisk continues a cut blob itself with Range requests, up to its
retry budget (``RegistrySettings.retry_attempts``, 5 cuts); the proxy cuts
the blob that many times, so the failure reaches the pipeline, whose retry
re-opens the image at the offset reached instead of starting over.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import signal
from dataclasses import replace
from pathlib import Path

import pytest

import containerdisk
from cdi import ImportRequest, ImportSettings, MiB, Progress, SourceSpec, VolumePool, run_import
from tests.cdi.conftest import convert, make_base, same_disk
from tests.cdi.test_resume import diskplane, interrupt_when_journalled
from tests.support.faultproxy import FaultyRegistry

KiB = 1024
CUTS = 5  # containerdisk's RegistrySettings.retry_attempts


async def _push(registry: FaultyRegistry, disk: Path, repo: str, **options: object) -> str:
    ref = f"{registry.host}/{repo}:v1"
    async with containerdisk.RegistryClient() as client:
        await client.push_disk(disk, ref, **options)  # type: ignore[arg-type]
    return ref


async def _layer_digests(ref: str) -> list[str]:
    async with containerdisk.RegistryClient() as client:
        resolved = await client.resolve(ref)
    return [layer.digest for layer in resolved.manifest.layers]


def _monotonic_reads(events: list[Progress]) -> bool:
    reads = [p.source_bytes_read for p in events if p.phase == "transfer"]
    return all(a <= b for a, b in itertools.pairwise(reads))


@pytest.mark.parametrize(
    ("options", "drop_layer"),
    [
        ({"format": "artifact", "compression": "none", "segment_size": 1 * MiB}, 2),
        ({}, 0),
    ],
    ids=["artifact-segments", "containerdisk-gzip"],
)
# The artifact case is the sharp one (the old restart-from-0 fails both its
# segment-count and monotonic-progress checks); with a 4 MiB image the gzip
# layer's cuts may land while the first pieces are still buffered, so that
# case checks correctness of a re-opened layer more than the offset.
async def test_dropped_blob_download_resumes(
    registry_faulty: FaultyRegistry,
    pool: VolumePool,
    settings: ImportSettings,
    base: Path,
    options: dict[str, object],
    drop_layer: int,
) -> None:
    ref = await _push(registry_faulty, base, "disks/resume", **options)
    layers = await _layer_digests(ref)
    dropped = layers[drop_layer]
    registry_faulty.proxy.clear_log()
    registry_faulty.drop_response_after("GET", f"/blobs/{dropped}$", 100 * KiB, times=CUTS)
    settings = replace(settings, progress_interval=0.0)  # every step is an event
    events: list[Progress] = []
    spec = SourceSpec(kind="registry", url=f"docker://{ref}")
    result = await run_import(
        pool, ImportRequest("ns", "d", 64 * MiB, spec), on_progress=events.append,
        settings=settings,
    )  # fmt: skip
    assert same_disk(base, result.volume)
    gets = [r for r in registry_faulty.log if r.method == "GET" and "/blobs/" in r.path]
    faults = [r.fault for r in gets if r.path.endswith(dropped)]
    assert faults == ["drop_response"] * CUTS + [None]
    assert _monotonic_reads(events)  # resumed, not rewound to byte 0
    if len(layers) > 1:  # segments finished before the drop are not fetched again
        for digest in layers[:drop_layer]:
            assert len([r for r in gets if r.path.endswith(digest)]) == 1


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _segment_gets(registry: FaultyRegistry, digests: list[str]) -> dict[int, int]:
    gets = [r.path for r in registry.log if r.method == "GET" and "/blobs/" in r.path]
    return {i: sum(p.endswith(d) for p in gets) for i, d in enumerate(digests)}


@pytest.mark.parametrize(
    ("disk_format", "sig", "checksum"),
    [
        ("raw", signal.SIGKILL, False),  # into the volume
        ("raw", signal.SIGINT, False),
        ("qcow2", signal.SIGKILL, False),  # via a scratch copy
        ("qcow2", signal.SIGINT, False),
        ("raw", signal.SIGKILL, True),  # the hash state is journalled with the offset
    ],
    ids=["raw-SIGKILL", "raw-SIGINT", "qcow2-SIGKILL", "qcow2-SIGINT", "raw-SIGKILL-checksum"],
)
async def test_killed_registry_import_resumes_when_rerun(
    registry_faulty: FaultyRegistry,
    tmp_path: Path,
    disk_format: str,
    sig: signal.Signals,
    checksum: bool,
) -> None:
    # An 8-segment artifact; every blob GET is slowed so the first run is
    # caught half-way. The rerun fetches no segment that ended before the
    # journalled offset (the one in flight is re-read: its digest covers it).
    base = make_base(tmp_path / "big.raw", size=8 * MiB, seed=5)
    disk = base if disk_format == "raw" else convert(base, "qcow2", tmp_path / "big.qcow2")
    ref = await _push(
        registry_faulty, disk, "disks/killed", format="artifact", segment_size=1 * MiB
    )
    segments = await _layer_digests(ref)
    registry_faulty.delay("GET", "/blobs/", 0.4, times=100)
    data_dir = tmp_path / "data"
    journal = data_dir / "volumes" / "ns" / "d" / "import.journal.json"
    extra = ["--checksum", f"sha256:{_sha256(disk)}"] if checksum else []
    proc = diskplane(data_dir, f"docker://{ref}", *extra)
    done, err = await asyncio.to_thread(interrupt_when_journalled, proc, journal, sig, 2 * MiB)
    assert journal.exists(), err
    registry_faulty.proxy.reset()
    rerun = diskplane(data_dir, f"docker://{ref}", *extra)
    out, err = await asyncio.to_thread(rerun.communicate, timeout=60)
    assert rerun.returncode == 0, err
    assert "resumed" in out
    volume = VolumePool.for_data_dir(data_dir).get("ns", "d")
    assert same_disk(base, volume)
    gets = _segment_gets(registry_faulty, segments)
    stored = disk.stat().st_size
    for index, count in gets.items():
        end = min((index + 1) * MiB, stored)
        assert count == (0 if end <= done else 1), (index, done, gets)
