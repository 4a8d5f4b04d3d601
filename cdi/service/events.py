"""Fan-out of job snapshots to progress-stream subscribers (SSE).

Each subscriber has a small bounded queue. Snapshots are whole states, so
when a slow reader falls behind the oldest one is dropped: the reader
always ends with the newest state and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from cdi.service.schema import JsonObject

SUBSCRIBER_QUEUE_SIZE = 32


class EventHub:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[JsonObject]]] = {}

    @contextlib.contextmanager
    def subscribe(self, job_id: str) -> Iterator[asyncio.Queue[JsonObject]]:
        queue: asyncio.Queue[JsonObject] = asyncio.Queue(SUBSCRIBER_QUEUE_SIZE)
        self._subscribers.setdefault(job_id, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._subscribers.get(job_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._subscribers[job_id]

    def publish(self, job_id: str, snapshot: JsonObject) -> None:
        for queue in self._subscribers.get(job_id, ()):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(snapshot)

    @property
    def subscriber_count(self) -> int:
        return sum(len(queues) for queues in self._subscribers.values())
