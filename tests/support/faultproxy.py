"""A fault-injecting HTTP reverse proxy, for retry tests against real servers.

``FaultProxy`` forwards every request to an upstream base URL, streaming
bodies both ways in bounded chunks (nothing is buffered whole), unless a
rule matches the request's method and path:

- ``set_faults(method, path_regex, status=503, times=2)``: answer ``status``
  itself, without forwarding, ``times`` times;
- ``drop_request_after(method, path_regex, nbytes, times=1)``: forward the
  first ``nbytes`` of the request body, then close both connections (an
  interrupted upload);
- ``drop_response_after(method, path_regex, nbytes, times=1)``: forward the
  response headers and ``nbytes`` of its body, then close the client
  connection (an interrupted download);
- ``delay(method, path_regex, seconds, times=1)``: wait ``seconds`` before
  forwarding (a slow link, to catch a transfer half-way).

Rules are tried in the order they were added; an exhausted rule is skipped.
The client's ``Host`` header is passed upstream, so absolute ``Location``
headers the upstream builds point back at the proxy.

Fixtures: ``registry_faulty`` (function-scoped) puts a session proxy in front
of the plain ``registry``; ``fault_proxy`` is a factory for a proxy in front of
any HTTP upstream (e.g. ``fault_proxy(s3_server.endpoint_url)``), stopped after
the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import aiohttp
import pytest
from aiohttp import web

from tests.support.loopthread import LoopThread
from tests.support.registry import Registry, RegistryRequest

CHUNK_SIZE = 64 * 1024
# Per-request limits for the upstream hop.
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)


@dataclass
class ProxyRule:
    method: str  # "*" matches any method
    path_regex: str
    kind: Literal["status", "drop_request", "drop_response", "delay"]
    times: int
    status: int = 503
    nbytes: int = 0
    seconds: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.times > 0
            and self.method in ("*", method)
            and re.search(self.path_regex, path) is not None
        )


@dataclass
class ProxyRecord:
    """One request through the proxy; ``fault`` names the rule kind applied."""

    method: str
    path: str
    status: int = 0
    fault: str | None = None
    request_bytes: int = 0
    response_bytes: int = 0


@dataclass
class _ProxyState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    rules: list[ProxyRule] = field(default_factory=list)
    log: list[ProxyRecord] = field(default_factory=list)


class _Dropped(Exception):
    """The proxy cut a request body on purpose."""


class FaultProxy:
    """Test-facing handle; the serving half runs on the proxy's own loop."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.host = "127.0.0.1:0"
        self._state = _ProxyState()
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def set_faults(self, method: str, path_regex: str, status: int = 503, times: int = 2) -> None:
        self._add(ProxyRule(method, path_regex, "status", times, status=status))

    def drop_request_after(self, method: str, path_regex: str, nbytes: int, times: int = 1) -> None:
        self._add(ProxyRule(method, path_regex, "drop_request", times, nbytes=nbytes))

    def drop_response_after(
        self, method: str, path_regex: str, nbytes: int, times: int = 1
    ) -> None:
        self._add(ProxyRule(method, path_regex, "drop_response", times, nbytes=nbytes))

    def delay(self, method: str, path_regex: str, seconds: float, times: int = 1) -> None:
        self._add(ProxyRule(method, path_regex, "delay", times, seconds=seconds))

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.rules.clear()

    @property
    def log(self) -> list[ProxyRecord]:
        with self._state.lock:
            return [replace(r) for r in self._state.log]

    def clear_log(self) -> None:
        with self._state.lock:
            self._state.log.clear()

    def reset(self) -> None:
        self.clear_faults()
        self.clear_log()

    def _add(self, rule: ProxyRule) -> None:
        with self._state.lock:
            self._state.rules.append(rule)

    def _take_rule(self, method: str, path: str) -> ProxyRule | None:
        with self._state.lock:
            for rule in self._state.rules:
                if rule.matches(method, path):
                    rule.times -= 1
                    return replace(rule)
        return None

    # Serving side ---------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        record = ProxyRecord(request.method, request.path_qs)
        with self._state.lock:
            self._state.log.append(record)
        rule = self._take_rule(request.method, request.path)
        record.fault = rule.kind if rule else None
        if rule is not None and rule.kind == "status":
            record.status = rule.status
            return web.Response(status=rule.status, text="injected fault\n")
        if rule is not None and rule.kind == "delay":
            await asyncio.sleep(rule.seconds)
        assert self._session is not None
        request_limit = rule.nbytes if rule and rule.kind == "drop_request" else None
        try:
            async with self._session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=_forward_headers(request.headers),
                data=_body(request, record, request_limit) if request.body_exists else None,
                allow_redirects=False,
            ) as upstream:
                response_limit = rule.nbytes if rule and rule.kind == "drop_response" else None
                return await _relay(request, upstream, record, response_limit)
        except (aiohttp.ClientError, _Dropped):
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=502)

    async def start(self) -> web.AppRunner:
        self._session = aiohttp.ClientSession(
            timeout=UPSTREAM_TIMEOUT,
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        )
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.host = f"127.0.0.1:{runner.addresses[0][1]}"
        return runner

    async def stop(self, runner: web.AppRunner) -> None:
        await runner.cleanup()
        if self._session is not None:
            await self._session.close()


def _forward_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}


async def _body(
    request: web.Request, record: ProxyRecord, limit: int | None
) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK_SIZE):
        if limit is not None and record.request_bytes + len(chunk) >= limit:
            yield chunk[: limit - record.request_bytes]
            record.request_bytes = limit
            raise _Dropped(f"fault: request body cut after {limit} bytes")
        record.request_bytes += len(chunk)
        yield chunk


async def _relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    record: ProxyRecord,
    limit: int | None,
) -> web.StreamResponse:
    record.status = upstream.status
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    for name, value in upstream.headers.items():
        if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
            response.headers.add(name, value)
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    elif request.method != "HEAD" and upstream.status not in (204, 304):
        response.enable_chunked_encoding()
    await response.prepare(request)
    async for chunk in upstream.content.iter_chunked(CHUNK_SIZE):
        if limit is not None and record.response_bytes + len(chunk) >= limit:
            await response.write(chunk[: limit - record.response_bytes])
            record.response_bytes = limit
            assert request.transport is not None
            request.transport.close()
            return response
        record.response_bytes += len(chunk)
        await response.write(chunk)
    await response.write_eof()
    return response


@dataclass
class FaultyRegistry:
    """The plain ``registry`` behind a ``FaultProxy``; talk to ``.host``."""

    proxy: FaultProxy
    upstream: Registry

    @property
    def host(self) -> str:
        return self.proxy.host

    @property
    def url(self) -> str:
        return self.proxy.url

    def set_faults(self, method: str, path_regex: str, status: int = 503, times: int = 2) -> None:
        self.proxy.set_faults(method, path_regex, status, times)

    def drop_request_after(self, method: str, path_regex: str, nbytes: int, times: int = 1) -> None:
        self.proxy.drop_request_after(method, path_regex, nbytes, times)

    def drop_response_after(
        self, method: str, path_regex: str, nbytes: int, times: int = 1
    ) -> None:
        self.proxy.drop_response_after(method, path_regex, nbytes, times)

    def delay(self, method: str, path_regex: str, seconds: float, times: int = 1) -> None:
        self.proxy.delay(method, path_regex, seconds, times)

    @property
    def log(self) -> list[ProxyRecord]:
        return self.proxy.log

    def requests(self) -> list[RegistryRequest]:
        """What reached the registry (the upstream's access log)."""
        return self.upstream.requests()

    def blob_uploads(self, repository: str | None = None) -> list[RegistryRequest]:
        return self.upstream.blob_uploads(repository)

    def skopeo_flags(self, role: Literal["src", "dest"]) -> list[str]:
        return [f"--{role}-tls-verify=false"]


@contextlib.contextmanager
def running_fault_proxy(upstream: str, name: str = "fault-proxy") -> Iterator[FaultProxy]:
    """A ``FaultProxy`` to ``upstream`` on its own loop thread, for one block."""
    thread = LoopThread(name)
    proxy = FaultProxy(upstream)
    try:
        runner = thread.run(proxy.start())
        try:
            yield proxy
        finally:
            thread.run(proxy.stop(runner))
    finally:
        thread.stop()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[str], FaultProxy]]:
    """Factory: ``fault_proxy(upstream_url)`` starts a proxy stopped after the test."""
    with contextlib.ExitStack() as stack:

        def start(upstream: str) -> FaultProxy:
            return stack.enter_context(running_fault_proxy(upstream))

        yield start


@pytest.fixture(scope="session")
def _registry_proxy_session(_registry_session: Registry) -> Iterator[FaultProxy]:
    with running_fault_proxy(_registry_session.url, "registry-fault-proxy") as proxy:
        yield proxy


@pytest.fixture
def registry_faulty(registry: Registry, _registry_proxy_session: FaultProxy) -> FaultyRegistry:
    """A fault-injecting proxy in front of the (emptied) plain registry."""
    _registry_proxy_session.reset()
    return FaultyRegistry(_registry_proxy_session, registry)
