"""Run a few named tasks to completion; the first failure cancels the rest and is re-raised."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


async def run_named(coros: dict[str, Coroutine[Any, Any, None]]) -> None:
    """Unlike TaskGroup, re-raise the first error itself (not an ExceptionGroup)."""
    tasks = [asyncio.create_task(coro, name=name) for name, coro in coros.items()]
    try:
        pending: set[asyncio.Task[None]] = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
