"""Uploads on the real pipeline: qcow2.gz, a resumed half upload, multipart, wrong checksum."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import shutil
from pathlib import Path
from typing import Any

import aiohttp

from cdi.service import ImporterClient, VolumeRef
from tests.cdi.service.conftest import MiB, Service, qemu_img, raw_equal, write_sparse_raw

VOLUME = {"namespace": "default", "name": "up"}
URL = "/v1/uploads/default/up"


def staged(service: Service) -> list[Path]:
    """Files in the upload staging directory (which exists once something was staged)."""
    uploads = service.settings.state_dir / "uploads"
    return list(uploads.iterdir()) if uploads.exists() else []


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _qcow2_gz(tmp_path: Path) -> tuple[Path, Path]:
    """(the qcow2.gz to upload, the raw that ``qemu-img convert`` makes of it)."""
    raw = write_sparse_raw(tmp_path / "src.raw", 12 * MiB, seed=11)
    qcow2 = tmp_path / "src.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2))
    packed = tmp_path / "src.qcow2.gz"
    with open(qcow2, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    expected = tmp_path / "expected.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(expected))
    return packed, expected


async def _prepare(service: Service, image: Path, checksum: str | None = None) -> dict[str, str]:
    body: dict[str, Any] = {"source": {"upload": {}}, "target": VOLUME, "size": "32Mi"}
    body["checksum"] = checksum if checksum is not None else _sha256(image)
    await service.create(body)
    response = await service.client.post("/v1/upload-tokens", json={"target": VOLUME})
    return {"Authorization": f"Bearer {(await response.json())['token']}"}


async def test_qcow2_gz_upload_equals_qemu_img_convert(service: Service, tmp_path: Path) -> None:
    packed, expected = _qcow2_gz(tmp_path)
    headers = await _prepare(service, packed)
    response = await service.client.put(URL, data=io.BytesIO(packed.read_bytes()), headers=headers)
    job = await response.json()
    assert response.status == 200, job
    assert job["phase"] == "Succeeded"
    volume = service.pool.get("default", "up")
    assert raw_equal(volume.disk_path, expected)
    assert staged(service) == []


async def test_upload_cut_after_half_then_resumed(service: Service, tmp_path: Path) -> None:
    packed, expected = _qcow2_gz(tmp_path)
    headers = await _prepare(service, packed)
    data = packed.read_bytes()
    half = len(data) // 2
    await _send_and_drop(service, headers, data, half)
    status = await (await service.client.get(URL, headers=headers)).json()
    assert 0 < status["bytesReceived"] <= half
    # A compressed upload streams into its import, which started with the first bytes.
    assert status["phase"] in ("Queued", "Running")
    assert staged(service) == []
    # The client resumes from the server's offset.
    url = str(service.client.make_url(""))
    token = headers["Authorization"].split(" ", 1)[1]
    async with ImporterClient(url) as client:
        done = await client.upload_file(packed, VolumeRef("default", "up"), token)
        assert done.bytes_received == len(data)
        final = await client.wait(done.job_id)
    assert final.phase == "Succeeded", final.message
    assert raw_equal(service.pool.get("default", "up").disk_path, expected)


async def _send_and_drop(service: Service, headers: dict[str, str], data: bytes, cut: int) -> None:
    """A PUT that announces every byte, sends ``cut`` of them and hangs up."""
    host, port = service.client.host, service.client.port
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"PUT {URL}/async HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: {headers['Authorization']}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    writer.write(head + data[:cut])
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    del reader
    # Wait (bounded) until the server has noticed and closed the broken request.
    async with asyncio.timeout(30):
        while True:
            status = await (await service.client.get(URL, headers=headers)).json()
            if status["bytesReceived"] > 0 and not status["receiving"]:
                break
            await asyncio.sleep(0.05)


async def test_multipart_async_upload(service: Service, tmp_path: Path) -> None:
    raw = write_sparse_raw(tmp_path / "plain.raw", 6 * MiB, seed=2)
    headers = await _prepare(service, raw)
    form = aiohttp.FormData()
    form.add_field(
        "file",
        io.BytesIO(raw.read_bytes()),
        filename="plain.raw",
        content_type="application/octet-stream",
    )
    response = await service.client.post(URL + "/async", data=form, headers=headers)
    status = await response.json()
    assert response.status == 200, status
    final = await service.wait(status["jobId"])
    assert final["phase"] == "Succeeded", final
    assert raw_equal(service.pool.get("default", "up").disk_path, raw)


async def test_wrong_checksum_fails_finally_and_leaves_no_volume(
    service: Service, tmp_path: Path
) -> None:
    raw = write_sparse_raw(tmp_path / "plain.raw", 4 * MiB, seed=9)
    headers = await _prepare(service, raw, checksum="sha256:" + "0" * 64)
    response = await service.client.put(URL, data=io.BytesIO(raw.read_bytes()), headers=headers)
    body = await response.json()
    assert response.status == 422
    assert "checksum" in body["error"].lower()
    job = service.state.scheduler.list()[0]
    assert job.phase.value == "Failed"
    assert job.reason == "ChecksumError"
    assert job.message is not None
    assert "the upload for volume default/up" in job.message  # not the staging path
    assert ".part" not in job.message
    assert ".part" not in body["error"]
    assert service.pool.list() == []
    assert staged(service) == []


async def test_staging_counts_against_capacity_and_goes_with_cancel(
    service: Service, tmp_path: Path
) -> None:
    uploads = service.settings.state_dir / "uploads"
    # qcow2 needs random access, so it is staged (raw and compressed uploads stream).
    raw = write_sparse_raw(tmp_path / "plain.raw", 4 * MiB, seed=12)
    image = tmp_path / "plain.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(image))
    raw = image
    headers = await _prepare(service, raw)
    too_big = 32 * MiB + 1  # one byte more than the volume's capacity
    response = await service.client.put(
        URL + "/async",
        data=b"x" * 1024,
        headers={**headers, "Content-Range": f"bytes 0-1023/{too_big}"},
    )
    assert response.status == 413, await response.text()
    half = raw.stat().st_size // 2
    response = await service.client.put(
        URL + "/async",
        data=io.BytesIO(raw.read_bytes()[:half]),
        headers={**headers, "Content-Range": f"bytes 0-{half - 1}/{raw.stat().st_size}"},
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["bytesReceived"] == half
    assert any(uploads.iterdir())
    job_id = service.state.scheduler.list()[0].id
    response = await service.client.delete(f"/v1/imports/{job_id}")
    assert response.status == 200
    assert (await response.json())["phase"] == "Cancelled"
    assert not any(uploads.iterdir())
    assert service.pool.list() == []
