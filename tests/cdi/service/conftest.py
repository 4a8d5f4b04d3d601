"""Fixtures for the importer service: an in-process app on the real pipeline, images."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cdi import VolumePool
from cdi.service import ServiceSettings, create_app
from cdi.service.state import SERVICE, ImporterService

MiB = 1024 * 1024
# Every wait on the service in these tests is bounded by this.
WAIT_TIMEOUT = 60.0


@dataclass
class Service:
    client: TestClient[Any, Any]
    settings: ServiceSettings

    @property
    def state(self) -> ImporterService:
        return self.client.app[SERVICE]  # type: ignore[index]

    @property
    def pool(self) -> VolumePool:
        return VolumePool.for_data_dir(self.settings.data_dir)

    async def create(self, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
        response = await self.client.post("/v1/imports", json=body)
        data: dict[str, Any] = await response.json()
        assert response.status == status, data
        return data

    async def job(self, job_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/imports/{job_id}")
        assert response.status == 200
        data: dict[str, Any] = await response.json()
        return data

    async def wait(self, job_id: str, timeout: float = WAIT_TIMEOUT) -> dict[str, Any]:
        """Follow the SSE stream to the end; returns the last snapshot."""
        last: dict[str, Any] = {}
        async with asyncio.timeout(timeout):
            response = await self.client.get(f"/v1/imports/{job_id}/events")
            assert response.status == 200
            async for line in response.content:
                if line.startswith(b"data: "):
                    last = json.loads(line[6:])
        return last

    async def wait_for(
        self,
        job_id: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = WAIT_TIMEOUT,
    ) -> dict[str, Any]:
        """The first SSE snapshot that satisfies ``predicate``."""
        async with asyncio.timeout(timeout):
            response = await self.client.get(f"/v1/imports/{job_id}/events")
            async for line in response.content:
                if line.startswith(b"data: "):
                    snapshot: dict[str, Any] = json.loads(line[6:])
                    if predicate(snapshot):
                        response.close()
                        return snapshot
        raise AssertionError(f"job {job_id} ended without reaching the awaited state")


ServiceFactory = Callable[..., Awaitable[Service]]


@pytest.fixture
def service_factory(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
) -> ServiceFactory:
    async def make(**overrides: Any) -> Service:
        options: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "job_retry_backoff_seconds": 0.1,
            "persist_interval_seconds": 0.2,
        }
        options.update(overrides)
        settings = ServiceSettings(**options)
        client = await aiohttp_client(create_app(settings))
        return Service(client, settings)

    return make


@pytest.fixture
async def service(service_factory: ServiceFactory) -> Service:
    return await service_factory()


def write_sparse_raw(path: Path, size: int, seed: int = 1) -> Path:
    """A raw disk of ``size`` bytes: random data in every other MiB, holes between."""
    rng = os.urandom if seed < 0 else None
    with open(path, "wb") as file:
        file.truncate(size)
        for index, offset in enumerate(range(0, size, 2 * MiB)):
            file.seek(offset)
            block = rng(MiB) if rng else _pattern(seed + index, min(MiB, size - offset))
            file.write(block)
    return path


def _pattern(seed: int, length: int) -> bytes:
    import random

    return random.Random(seed).randbytes(length)


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


def raw_equal(a: Path, b: Path) -> bool:
    result = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "raw", str(a), str(b)],
        capture_output=True,
        timeout=60,
    )
    return result.returncode == 0


class GateRunner:
    """A real ImportRunner behind the seam whose jobs finish when the test opens their gate.

    It reports half the bytes at once, then waits; used where the test must
    control timing (queueing, fairness, metrics), never to stand in for the
    pipeline's own behaviour.
    """

    TOTAL = 1000

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.discarded: list[str] = []
        self.changed = asyncio.Event()

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    async def run(self, job: Any, on_progress: Any) -> Any:
        from cdi.service import ImportOutcome, ProgressUpdate

        name = job.spec.target.name
        self.started.append(name)
        self.changed.set()
        on_progress(ProgressUpdate("transfer", self.TOTAL // 2, self.TOTAL, self.TOTAL // 2))
        await self.gate(name).wait()
        on_progress(ProgressUpdate("done", self.TOTAL, self.TOTAL, self.TOTAL))
        return ImportOutcome(self.TOTAL, self.TOTAL)

    async def wait_started(self, count: int, timeout: float = WAIT_TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while len(self.started) < count:
                self.changed.clear()
                await self.changed.wait()

    def discard(self, job: Any) -> None:
        self.discarded.append(job.spec.target.name)

    def volume_exists(self, job: Any) -> bool:
        return True


@pytest.fixture
def gate_service_factory(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
) -> Callable[..., Awaitable[tuple[Service, GateRunner]]]:
    async def make(**overrides: Any) -> tuple[Service, GateRunner]:
        runner = GateRunner()
        settings = ServiceSettings(data_dir=tmp_path / "data", **overrides)
        client = await aiohttp_client(create_app(settings, runner))
        return Service(client, settings), runner

    return make
