"""The agent's event stream: phase changes and QMP events, fanned out to bounded subscribers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

SUBSCRIBER_QUEUE = 1024


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.dropped_subscribers = 0

    def publish(self, event: dict[str, Any]) -> None:
        event = {"time": time.time(), **event}
        for queue in list(self._subscribers):
            if queue.full():
                # A subscriber that cannot keep up loses its stream, not the agent its memory.
                self._subscribers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)
                self.dropped_subscribers += 1
            else:
                queue.put_nowait(event)

    async def subscribe(self) -> AsyncGenerator[dict[str, Any], None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._subscribers.discard(queue)

    def close(self) -> None:
        for queue in list(self._subscribers):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
        self._subscribers.clear()
