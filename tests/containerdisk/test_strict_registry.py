"""A registry that wants Content-Range on every PATCH: we fall back to buffered chunks."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from containerdisk import RegistryClient, RegistrySettings
from tests.containerdisk.conftest import MiB

pytestmark = pytest.mark.timeout(60)
_HOP = {"transfer-encoding", "connection", "keep-alive", "content-length", "host"}


def strict_front(upstream: str, refused: list[str]) -> web.Application:
    async def forward(request: web.Request) -> web.StreamResponse:
        if request.method == "PATCH" and "Content-Range" not in request.headers:
            refused.append(request.path)
            await request.read()
            return web.json_response(
                {"errors": [{"code": "BLOB_UPLOAD_INVALID", "message": "Content-Range"}]},
                status=400,
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["Host"] = request.host
        body = await request.read()
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method,
                upstream + request.path_qs,
                headers=headers,
                data=io.BytesIO(body),
                allow_redirects=False,
            ) as resp,
        ):
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
            return web.Response(status=resp.status, body=await resp.read(), headers=out)

    app = web.Application(client_max_size=64 * MiB)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def test_push_falls_back_to_content_range_chunks(
    registry, aiohttp_server, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    refused: list[str] = []
    server = await aiohttp_server(strict_front(registry.url, refused))
    ref = f"127.0.0.1:{server.port}/strict/disk:v1"
    disk = raw_disk(5 * MiB, dense_fraction=1.0)
    settings = RegistrySettings(chunk_size=1 * MiB, retry_backoff=0.01)
    async with RegistryClient(settings=settings) as client:
        await client.push_disk(disk, ref, disk_format="keep", compression="none")
        await client.pull_disk(ref, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == disk.read_bytes()
    assert len(refused) == 1  # only the first streamed PATCH; buffered chunks after it
