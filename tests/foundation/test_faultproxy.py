"""The fault proxy in front of the registry: injected 503s and cut transfers."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.support.faultproxy import FaultProxy, FaultyRegistry
from tests.support.http_server import FileServer
from tests.support.registry import write_oci_layout

UPLOADS = r"^/v2/.+/blobs/uploads/"


async def test_503_twice_then_the_upload_goes_through(registry_faulty: FaultyRegistry) -> None:
    registry_faulty.set_faults("POST", UPLOADS, status=503, times=2)
    url = f"{registry_faulty.url}/v2/test/retry/blobs/uploads/"
    statuses = []
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(url) as resp:
                statuses.append(resp.status)
                location = resp.headers.get("Location", "")
    assert statuses == [503, 503, 202]
    assert location.startswith(registry_faulty.url)  # Location points back at the proxy
    assert [r.fault for r in registry_faulty.log] == ["status", "status", None]
    assert [r.method for r in registry_faulty.blob_uploads()] == ["POST"]  # one reached it


async def _chunked_upload(
    session: aiohttp.ClientSession, base: str, repo: str, data: bytes, chunk: int
) -> tuple[int, str]:
    """POST, PATCH in chunks, PUT; returns (final status, last Location)."""
    async with session.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        location = resp.headers["Location"]
    headers = {"Content-Type": "application/octet-stream"}
    for offset in range(0, len(data), chunk):
        part = data[offset : offset + chunk]
        headers["Content-Range"] = f"{offset}-{offset + len(part) - 1}"
        async with session.patch(location, data=part, headers=headers) as resp:
            if resp.status != 202:
                return resp.status, location
            location = resp.headers["Location"]
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with session.put(location, params={"digest": digest}) as resp:
        return resp.status, location


async def test_interrupted_chunked_upload_needs_a_new_session(
    registry_faulty: FaultyRegistry,
) -> None:
    data = os.urandom(600_000)
    registry_faulty.drop_request_after("PATCH", UPLOADS, 100_000)
    base, repo = registry_faulty.url, "test/chunked"
    async with aiohttp.ClientSession() as session:
        try:
            await _chunked_upload(session, base, repo, data, chunk=256 * 1024)
        except aiohttp.ClientError:
            pass
        else:
            raise AssertionError("the cut PATCH did not surface as a client error")
        # distribution 2.8 wrote the partial chunk but the client never got the
        # new upload state: the old Location is dead, only a new upload works.
        status, _ = await _chunked_upload(session, base, repo, data, chunk=256 * 1024)
        assert status == 201
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        async with session.get(f"{base}/v2/{repo}/blobs/{digest}") as resp:
            assert await resp.read() == data
    cut = [r for r in registry_faulty.log if r.fault == "drop_request"]
    assert [(r.method, r.request_bytes) for r in cut] == [("PATCH", 100_000)]
    posts = [r for r in registry_faulty.blob_uploads(repo) if r.method == "POST"]
    assert len(posts) == 2


async def test_cut_download_resumes_with_range(registry_faulty: FaultyRegistry) -> None:
    data = os.urandom(500_000)
    base, repo = registry_faulty.url, "test/pull"
    registry_faulty.drop_response_after("GET", r"/blobs/sha256:", 123_456)
    received = bytearray()
    async with aiohttp.ClientSession() as session:
        status, _ = await _chunked_upload(session, base, repo, data, chunk=len(data))
        assert status == 201
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        url = f"{base}/v2/{repo}/blobs/{digest}"
        async with session.head(url) as resp:
            assert resp.headers["Content-Length"] == str(len(data))
        try:
            async with session.get(url) as resp:
                async for piece in resp.content.iter_any():
                    received += piece
        except aiohttp.ClientPayloadError:
            pass
        assert len(received) == 123_456
        async with session.get(url, headers={"Range": f"bytes={len(received)}-"}) as resp:
            assert resp.status == 206
            received += await resp.read()
    assert bytes(received) == data


def test_skopeo_push_through_the_proxy(registry_faulty: FaultyRegistry, tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "src", {"disk/disk.img": os.urandom(3 * 1024 * 1024)})
    result = subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--preserve-digests",
            *registry_faulty.skopeo_flags("dest"),
            layout.reference,
            f"docker://{registry_faulty.host}/test/proxied:v1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert {r.repository for r in registry_faulty.blob_uploads()} == {"test/proxied"}
    assert max(r.request_bytes for r in registry_faulty.log) > 3 * 1024 * 1024


async def test_fault_proxy_in_front_of_any_server(
    fault_proxy: Callable[[str], FaultProxy], http_server: FileServer
) -> None:
    (http_server.root / "f.bin").write_bytes(b"payload")
    proxy = fault_proxy(http_server.base_url)
    proxy.set_faults("GET", r"^/f\.bin$", status=500, times=1)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxy.url}/f.bin") as resp:
            assert resp.status == 500
        async with session.get(f"{proxy.url}/f.bin") as resp:
            assert await resp.read() == b"payload"
    assert [r.status for r in http_server.log] == [200]
