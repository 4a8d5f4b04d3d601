"""A registry blob download that keeps dropping resumes at the offset reached within the run.

containerdisk continues a cut blob itself with Range requests, up to its
retry budget (``RegistrySettings.retry_attempts``, 5 cuts); the proxy cuts
the blob that many times, so the failure reaches the pipeline, whose retry
re-opens the image at the offset reached instead of starting over.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

import containerdisk
from cdi import ImportRequest, ImportSettings, MiB, Progress, SourceSpec, VolumePool, run_import
from tests.cdi.conftest import same_disk
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
