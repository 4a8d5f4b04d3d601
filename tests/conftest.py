"""Suite-wide hygiene: leaked-task detection and the real-server fixtures.

The real servers live in ``tests/support`` (one module each) and are loaded
as plugins so every test folder can use them.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import pytest

pytest_plugins: list[str] = [
    "tests.support.certs",
    "tests.support.http_server",
    "tests.support.s3",
    "tests.support.registry",
    "tests.support.faultproxy",
    "tests.support.guest",
    "tests.support.kube",
]


@pytest.fixture
async def _task_leak_check() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    # Give tasks that are finishing on their own one loop turn.
    await asyncio.sleep(0)
    leaked = [
        t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()
    ]
    for task in leaked:
        task.cancel()
    if leaked:
        names = ", ".join(sorted(t.get_name() for t in leaked))
        pytest.fail(f"test left running tasks behind: {names}")


@pytest.fixture(autouse=True)
def _no_leaked_tasks(request: pytest.FixtureRequest) -> None:
    """Every async test must cancel and await the tasks it starts."""
    if inspect.iscoroutinefunction(getattr(request, "function", None)):
        request.getfixturevalue("_task_leak_check")
