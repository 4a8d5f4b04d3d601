"""The work queue: de-duplication, no concurrent processing of one key, backoff."""

from __future__ import annotations

import asyncio

import pytest

from controllers.reconcile import ShutDown, WorkQueue

Key = tuple[str, str]


async def test_a_key_waiting_is_queued_once() -> None:
    queue: WorkQueue[Key] = WorkQueue()
    for _ in range(3):
        queue.add(("ns", "a"))
    queue.add(("ns", "b"))
    assert len(queue) == 2
    assert await queue.get() == ("ns", "a")
    assert await queue.get() == ("ns", "b")


async def test_a_key_added_while_processing_comes_back_after_done() -> None:
    queue: WorkQueue[Key] = WorkQueue()
    queue.add(("ns", "a"))
    key = await queue.get()
    queue.add(key)  # a change arrives while a worker holds the key
    queue.add(key)
    assert len(queue) == 0  # not handed to a second worker
    queue.done(key)
    assert len(queue) == 1
    assert await queue.get() == key
    queue.done(key)
    assert len(queue) == 0


async def test_rate_limited_retries_back_off_and_forget_resets() -> None:
    queue: WorkQueue[Key] = WorkQueue(base_delay=0.01, max_delay=0.04)
    key = ("ns", "a")
    delays = [queue.add_rate_limited(key) for _ in range(4)]
    assert delays == [0.01, 0.02, 0.04, 0.04]
    assert await asyncio.wait_for(queue.get(), 1) == key
    queue.done(key)
    queue.forget(key)
    assert queue.failures(key) == 0
    assert queue.add_rate_limited(key) == 0.01


async def test_waiting_workers_wake_and_shutdown_releases_them() -> None:
    queue: WorkQueue[Key] = WorkQueue()
    waiter = asyncio.create_task(queue.get(), name="worker")
    await asyncio.sleep(0)
    queue.add(("ns", "a"))
    assert await asyncio.wait_for(waiter, 1) == ("ns", "a")
    idle = asyncio.create_task(queue.get(), name="idle-worker")
    await asyncio.sleep(0)
    queue.shutdown()
    with pytest.raises(ShutDown):
        await asyncio.wait_for(idle, 1)
