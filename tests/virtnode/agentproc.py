"""The node agent as a real subprocess (``diskplane node serve``) and small API clients."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.process import free_port, http_answers, start_server, stop_server


@dataclass
class AgentProcess:
    data_dir: Path
    accel: str
    volume_dir: Path | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        argv = [sys.executable, "-m", "controllers.cli", "--data-dir", str(self.data_dir)]
        argv += ["node", "serve", "--listen", f"127.0.0.1:{self.port}", "--node-name", "test"]
        if self.volume_dir is not None:
            argv += ["--volume-dir", str(self.volume_dir)]
        env = {**os.environ, "DISKPLANE_ACCEL": self.accel}
        log = self.data_dir / "agent.log"
        self.process = await asyncio.to_thread(
            start_server, argv, log, lambda: http_answers(self.url + "/healthz"), env
        )

    async def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.process.wait, 10)

    async def stop(self) -> None:
        if self.process is not None:
            await asyncio.to_thread(stop_server, self.process)


async def api(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None, expect: int = 200
) -> Any:
    async with session.request(method, url, json=body) as resp:
        data = await resp.json()
        assert resp.status == expect, (resp.status, data)
        return data


async def console_until(
    session: aiohttp.ClientSession, url: str, pattern: str, limit: float = 60
) -> re.Match[str]:
    """Open the console websocket and read until ``pattern`` matches the text seen."""
    text = ""
    regex = re.compile(pattern)
    async with asyncio.timeout(limit), session.ws_connect(url) as ws:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            text += msg.data.decode(errors="replace")
            match = regex.search(text)
            if match:
                return match
    raise AssertionError(f"console closed before {pattern!r}; got {text[-500:]!r}")


async def sse_events(session: aiohttp.ClientSession, url: str) -> AsyncIterator[dict[str, Any]]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as resp:
        async for raw in resp.content:
            line = raw.decode().strip()
            if line == ": subscribed":
                yield {"type": "subscribed"}
            elif line.startswith("data: "):
                yield json.loads(line.removeprefix("data: "))
