"""AgentClient against a misbehaving agent on 127.0.0.1: only virtnode errors come out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from virtnode import AgentClient, AgentUnavailableError
from virtnode import client as client_module


async def _garbled_events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b": subscribed\n\ndata: {not json\n\n")
    return response


async def _silent_metrics(request: web.Request) -> web.Response:
    await asyncio.Event().wait()  # never answers; the server cancels it at teardown
    raise AssertionError("unreachable")


@pytest.fixture
async def misbehaving(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> TestServer:
    app = web.Application()
    app.router.add_get("/v1/events", _garbled_events)
    app.router.add_get("/metrics", _silent_metrics)
    return await aiohttp_server(app)


async def test_garbled_event_stream_is_agent_unavailable(misbehaving: TestServer) -> None:
    seen: list[dict[str, Any]] = []

    async def collect(agent: AgentClient) -> None:
        async for event in agent.events():
            seen.append(event)

    async with AgentClient(str(misbehaving.make_url(""))) as agent:
        with pytest.raises(AgentUnavailableError, match="events"):
            await collect(agent)
    assert seen == [{"type": "subscribed"}]


async def test_metrics_call_is_bounded(
    misbehaving: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "REQUEST_TIMEOUT", 0.2)
    async with AgentClient(str(misbehaving.make_url(""))) as agent:
        async with asyncio.timeout(5):
            with pytest.raises(AgentUnavailableError, match="metrics"):
                await agent.metrics()
