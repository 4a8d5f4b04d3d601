"""The agent's event stream: phase changes and QMP events, fanned out to bounded subscribers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

SUBSCRIBER_QUEUE = 1024


class Subscription:
    """One subscriber's bounded queue; registered as soon as it exists."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(SUBSCRIBER_QUEUE)

    async def get(self) -> dict[str, Any] | None:
        """The next event, or ``None`` once the stream ended (agent closing, or too slow)."""
        return await self.queue.get()

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self.dropped_subscribers = 0

    def publish(self, event: dict[str, Any]) -> None:
        event = {"time": time.time(), **event}
        for sub in list(self._subscribers):
            if sub.queue.full():
                # A subscriber that cannot keep up loses its stream, not the agent its memory.
                self._end(sub)
                self.dropped_subscribers += 1
            else:
                sub.queue.put_nowait(event)

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def _end(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        if sub.queue.full():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)

    def close(self) -> None:
        for sub in list(self._subscribers):
            self._end(sub)
