"""``AgentClient``: the node agent's HTTP API from Python (for the controllers, tests, CLI).

::

    async with AgentClient("http://127.0.0.1:8186") as agent:
        vmi = await agent.create(vmi_dict)
        await agent.action("default", "vm1", "pause")
        async for event in agent.events():
            ...

Errors come back as the virtnode exceptions the agent raised (by HTTP status:
404 :class:`VmNotFoundError`, 409 :class:`VmStateError`, 422 :class:`SpecError`,
504 :class:`QmpTimeoutError`, others :class:`VirtnodeError`); connection problems are
:class:`AgentUnavailableError`. No aiohttp exception leaves this module.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import aiohttp

from virtnode.errors import (
    AgentUnavailableError,
    QmpTimeoutError,
    SpecError,
    VirtnodeError,
    VmNotFoundError,
    VmStateError,
)

#: Per-request limit; long actions (stop with a grace period, migrate) get their own.
REQUEST_TIMEOUT = 60.0
LONG_ACTION_TIMEOUT = 600.0
_BY_STATUS: dict[int, type[VirtnodeError]] = {
    404: VmNotFoundError,
    409: VmStateError,
    422: SpecError,
    504: QmpTimeoutError,
}


class AgentClient:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AgentClient:
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    def _vmi_url(self, namespace: str, name: str) -> str:
        return f"{self.base_url}/v1/namespaces/{namespace}/vmis/{name}"

    async def _request(
        self,
        method: str,
        url: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        limit: float = REQUEST_TIMEOUT,
    ) -> Any:
        assert self._session is not None, "use AgentClient as 'async with'"
        try:
            async with self._session.request(
                method, url, json=body, params=params, timeout=aiohttp.ClientTimeout(total=limit)
            ) as resp:
                data = await resp.json()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            raise AgentUnavailableError(
                f"node agent {self.base_url}: {method} {url}: {exc}"
            ) from exc
        if status >= 300:
            kind = _BY_STATUS.get(status, VirtnodeError)
            raise kind(str(data.get("message", f"HTTP {status}")))
        return data

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", f"{self.base_url}/healthz")
        return result

    async def create(self, vmi: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "POST", f"{self.base_url}/v1/vmis", dict(vmi), limit=LONG_ACTION_TIMEOUT
        )
        return result

    async def get(self, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", self._vmi_url(namespace, name))
        return result

    async def list(self, namespace: str | None = None) -> list[dict[str, Any]]:
        params = {"namespace": namespace} if namespace else None
        data = await self._request("GET", f"{self.base_url}/v1/vmis", params=params)
        return list(data["items"])

    async def delete(
        self, namespace: str, name: str, grace_period_s: float | None = None
    ) -> dict[str, Any]:
        params = None if grace_period_s is None else {"gracePeriodSeconds": str(grace_period_s)}
        result: dict[str, Any] = await self._request(
            "DELETE", self._vmi_url(namespace, name), params=params, limit=LONG_ACTION_TIMEOUT
        )
        return result

    async def action(
        self, namespace: str, name: str, action: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """``PUT .../{action}``; returns ``{"vmi": ..., "result": ...}``."""
        url = f"{self._vmi_url(namespace, name)}/{action}"
        result: dict[str, Any] = await self._request(
            "PUT", url, dict(body or {}), limit=LONG_ACTION_TIMEOUT
        )
        return result

    async def metrics(self) -> str:
        assert self._session is not None, "use AgentClient as 'async with'"
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        try:
            async with self._session.get(f"{self.base_url}/metrics", timeout=timeout) as resp:
                return await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AgentUnavailableError(f"node agent {self.base_url}: metrics: {exc}") from exc

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """The agent's event stream; the first item is ``{"type": "subscribed"}``."""
        assert self._session is not None, "use AgentClient as 'async with'"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        try:
            async with self._session.get(f"{self.base_url}/v1/events", timeout=timeout) as resp:
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if line == ": subscribed":
                        yield {"type": "subscribed"}
                    elif line.startswith("data: "):
                        yield json.loads(line.removeprefix("data: "))
        except (aiohttp.ClientError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AgentUnavailableError(f"node agent {self.base_url}: events: {exc}") from exc
