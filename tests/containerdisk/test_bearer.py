"""Bearer-token auth (the WWW-Authenticate challenge flow) in front of the real registry.

distribution's own token auth needs a signing CA and a token server; this test puts
a small token-checking front (aiohttp, speaking the registry token protocol) before
the real docker-registry: it answers 401 with a Bearer challenge, issues tokens for
exactly the scopes asked (with basic credentials), and forwards authorized requests.
"""

from __future__ import annotations

import base64
import io
import secrets
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from containerdisk import AuthenticationFailed, RegistryClient, RegistrySettings
from tests.containerdisk.conftest import MiB

pytestmark = pytest.mark.timeout(60)
USER, PASSWORD = "alice", "wonderland-7"
_HOP = {"transfer-encoding", "connection", "keep-alive", "content-length", "host"}


def token_front(upstream: str) -> tuple[web.Application, dict[str, list[str]]]:
    tokens: dict[str, set[str]] = {}  # token -> granted "repo:action"
    seen: dict[str, list[str]] = {"token_requests": [], "unauthorized": []}

    async def token(request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)
        granted = set()
        for scope in request.query.getall("scope", []):
            _, repo, actions = scope.split(":")
            granted |= {f"{repo}:{a}" for a in actions.split(",")}
        seen["token_requests"].append(" ".join(request.query.getall("scope", [])))
        value = secrets.token_hex(8)
        tokens[value] = granted
        return web.json_response({"token": value, "expires_in": 300})

    async def forward(request: web.Request) -> web.StreamResponse:
        path = request.path
        repo = path[4:].split("/blobs/")[0].split("/manifests/")[0] if path != "/v2/" else ""
        action = "pull" if request.method in ("GET", "HEAD") else "push"
        auth = request.headers.get("Authorization", "")
        granted = (
            tokens.get(auth.removeprefix("Bearer "), set()) if auth.startswith("Bearer ") else set()
        )
        if (path != "/v2/" and f"{repo}:{action}" not in granted) or (path == "/v2/" and not auth):
            seen["unauthorized"].append(f"{request.method} {path}")
            scope = f"repository:{repo}:{action}" if repo else ""
            challenge = f'Bearer realm="http://{request.host}/token",service="front"' + (
                f',scope="{scope}"' if scope else ""
            )
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED"}]},
                status=401,
                headers={"WWW-Authenticate": challenge},
            )
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in _HOP and k.lower() != "authorization"
        }
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
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
            return web.Response(status=resp.status, body=data, headers=out)

    app = web.Application(client_max_size=64 * MiB)
    app.router.add_get("/token", token)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app, seen


async def test_bearer_tokens_per_scope_are_fetched_once_and_reused(
    registry, aiohttp_server, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    app, seen = token_front(registry.url)
    server = await aiohttp_server(app)
    ref = f"127.0.0.1:{server.port}/bearer/disk:v1"
    settings = RegistrySettings(chunk_size=1 * MiB)
    disk = raw_disk(3 * MiB)
    async with RegistryClient(username=USER, password=PASSWORD, settings=settings) as client:
        await client.push_disk(disk, ref, disk_format="keep")
        await client.pull_disk(ref, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == disk.read_bytes()
    # One token for push (pull,push) and one for pull; every PATCH went out with a token.
    assert seen["token_requests"] == [
        "repository:bearer/disk:pull,push",
        "repository:bearer/disk:pull",
    ]
    # The /v2/ ping learnt the realm; no request after it was answered 401.
    assert seen["unauthorized"] == ["GET /v2/"]


async def test_bearer_with_wrong_password(registry, aiohttp_server) -> None:
    app, _ = token_front(registry.url)
    server = await aiohttp_server(app)
    async with RegistryClient(username=USER, password="nope-nope") as client:
        with pytest.raises(AuthenticationFailed) as err:
            await client.resolve(f"127.0.0.1:{server.port}/bearer/disk:v1")
    assert "nope-nope" not in str(err.value)
