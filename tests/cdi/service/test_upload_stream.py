"""Streamed uploads: raw and compressed bodies go straight into the volume, no staged copy."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cdi import VolumeNotFound
from tests.cdi.service.conftest import WAIT_TIMEOUT, MiB, Service, raw_equal, write_sparse_raw
from tests.cdi.service.servicectl import ServiceProcess
from tests.cdi.service.test_uploads import URL, _prepare, _send_and_drop, staged

PIECE = 256 * 1024


async def _partial_appears(service: Service) -> None:
    """Until the import has opened ``disk.img.partial`` (bounded)."""
    async with asyncio.timeout(WAIT_TIMEOUT):
        while True:
            try:
                if service.pool.get("default", "up").partial_path.exists():
                    return
            except VolumeNotFound:
                pass
            await asyncio.sleep(0.02)


async def _watched_body(service: Service, data: bytes, seen: list[int]) -> AsyncIterator[bytes]:
    """Sends ``data`` in pieces; halfway it waits for the import to be writing, and
    before every piece it looks into the staging directory."""
    for offset in range(0, len(data), PIECE):
        assert staged(service) == []
        if offset >= len(data) // 2 and not seen:
            await _partial_appears(service)
            seen.append(offset)
        yield data[offset : offset + PIECE]
    assert staged(service) == []


@pytest.mark.parametrize("packed", [False, True], ids=["raw", "raw.gz"])
async def test_streamed_upload_writes_no_staging_copy(
    service: Service, tmp_path: Path, packed: bool
) -> None:
    raw = write_sparse_raw(tmp_path / "src.raw", 12 * MiB, seed=21)
    image = raw
    if packed:
        image = tmp_path / "src.raw.gz"
        image.write_bytes(gzip.compress(raw.read_bytes(), compresslevel=1))
    headers = await _prepare(service, image)
    seen: list[int] = []
    body = _watched_body(service, image.read_bytes(), seen)
    response = await service.client.put(URL, data=body, headers=headers)
    job = await response.json()
    assert response.status == 200, job
    assert job["phase"] == "Succeeded"
    # The volume was being written while half the body had still to come.
    assert seen
    assert raw_equal(service.pool.get("default", "up").disk_path, raw)
    assert staged(service) == []


@pytest.mark.parametrize("overlap", [0, 4096], ids=["at-offset", "overlapping"])
async def test_raw_upload_cut_at_half_resumes_with_content_range(
    service: Service, tmp_path: Path, overlap: int
) -> None:
    raw = write_sparse_raw(tmp_path / "src.raw", 8 * MiB, seed=22)
    data = raw.read_bytes()
    headers = await _prepare(service, raw)  # sha256 over every byte, both requests
    await _send_and_drop(service, headers, data, len(data) // 2)
    head = await service.client.head(URL, headers=headers)
    offset = int(head.headers["Upload-Offset"])
    assert 0 < offset <= len(data) // 2
    assert staged(service) == []
    start = offset - overlap  # bytes the server already has are skipped
    response = await service.client.put(
        URL,
        data=io.BytesIO(data[start:]),
        headers={**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
    )
    job = await response.json()
    assert response.status == 200, job
    assert job["phase"] == "Succeeded", job
    assert raw_equal(service.pool.get("default", "up").disk_path, raw)
    assert staged(service) == []


async def test_streamed_gz_with_wrong_checksum_fails_and_leaves_no_volume(
    service: Service, tmp_path: Path
) -> None:
    raw = write_sparse_raw(tmp_path / "src.raw", 4 * MiB, seed=23)
    packed = gzip.compress(raw.read_bytes(), compresslevel=1)
    headers = await _prepare(service, raw, checksum="sha256:" + "1" * 64)
    response = await service.client.put(URL, data=io.BytesIO(packed), headers=headers)
    body = await response.json()
    assert response.status == 422, body
    assert "checksum" in body["error"].lower()
    assert service.pool.list() == []
    assert staged(service) == []


async def test_cancel_while_streaming_removes_the_partial_volume(
    service: Service, tmp_path: Path
) -> None:
    raw = write_sparse_raw(tmp_path / "src.raw", 4 * MiB, seed=24)
    data = raw.read_bytes()
    headers = await _prepare(service, raw)
    half = len(data) // 2
    response = await service.client.put(
        URL + "/async",
        data=io.BytesIO(data[:half]),
        headers={**headers, "Content-Range": f"bytes 0-{half - 1}/{len(data)}"},
    )
    status = await response.json()
    assert response.status == 200, status
    assert status["bytesReceived"] == half
    assert status["complete"] is False
    response = await service.client.delete(f"/v1/imports/{status['jobId']}")
    assert (await response.json())["phase"] == "Cancelled"
    assert service.pool.list() == []
    assert staged(service) == []


def test_restart_while_streaming_fails_the_job_cleanly(tmp_path: Path) -> None:
    """The stream and its hash state live in memory: after kill -9 the job ends
    ``UploadInterrupted`` and its partial volume goes (documented limit)."""
    data_dir = tmp_path / "data"
    raw = write_sparse_raw(tmp_path / "src.raw", 4 * MiB, seed=25)
    data = raw.read_bytes()
    service = ServiceProcess.start(data_dir, tmp_path / "service1.log")
    try:
        target = {"namespace": "default", "name": "up"}
        spec = {"source": {"upload": {}}, "target": target, "size": "32Mi"}
        job = service.call("POST", "/v1/imports", spec)
        token = service.call("POST", "/v1/upload-tokens", {"target": target})["token"]
        half = len(data) // 2
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Range": f"bytes 0-{half - 1}/{len(data)}",
        }
        request = urllib.request.Request(
            service.url + URL + "/async", data=data[:half], method="PUT", headers=headers
        )
        with urllib.request.urlopen(request, timeout=WAIT_TIMEOUT) as response:
            assert json.loads(response.read())["bytesReceived"] == half
        volume = data_dir / "volumes" / "default" / "up"
        service.wait_until(lambda: (volume / "disk.img.partial").exists(), "the import to write")
        service.kill9()
    finally:
        service.stop()
    service = ServiceProcess.start(data_dir, tmp_path / "service2.log")
    try:
        final = service.wait_finished(job["id"])
        assert final["phase"] == "Failed", final
        assert final["reason"] == "UploadInterrupted"
        assert not volume.exists()
    finally:
        service.stop()


async def test_too_large_raw_fails_while_streaming_with_the_import_reason(
    service: Service, tmp_path: Path
) -> None:
    """32 MiB of raw for a 32Mi volume (30 MiB usable): the import refuses it from the
    first bytes, and the sync PUT answers with that failure, not after the last byte."""
    raw = write_sparse_raw(tmp_path / "src.raw", 32 * MiB, seed=26)
    headers = await _prepare(service, raw)
    response = await service.client.put(URL, data=io.BytesIO(raw.read_bytes()), headers=headers)
    body = await response.json()
    assert response.status == 422, body
    job = service.state.scheduler.list()[0]
    assert job.reason == "ImageTooLarge", job.message
    assert service.state.metrics.upload_bytes < raw.stat().st_size  # refused mid-body
    assert service.pool.list() == []
    assert staged(service) == []
