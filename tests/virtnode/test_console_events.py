"""ConsoleHub and EventBus against real sockets and queues (no QEMU)."""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from virtnode import ConsoleError
from virtnode.console import CLIENT_QUEUE_CHUNKS, ConsoleHub
from virtnode.events import SUBSCRIBER_QUEUE, EventBus


@pytest.fixture
async def guest_side() -> AsyncIterator[tuple[Path, asyncio.Queue[asyncio.StreamWriter]]]:
    """A unix socket server standing in for QEMU's serial chardev."""
    directory = Path(tempfile.mkdtemp(prefix="dpcon-"))
    sock = directory / "serial.sock"
    writers: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await writers.put(writer)

    server = await asyncio.start_unix_server(accepted, str(sock))
    try:
        yield sock, writers
    finally:
        server.close()
        await server.wait_closed()
        for entry in directory.iterdir():
            entry.unlink()
        directory.rmdir()


async def test_backlog_is_bounded_and_late_clients_get_it(
    guest_side: tuple[Path, asyncio.Queue[asyncio.StreamWriter]],
) -> None:
    sock, writers = guest_side
    log = sock.with_name("serial.log")
    log.write_bytes(b"old boot output\n")
    hub = ConsoleHub(sock, log, vm="t/con", backlog_bytes=64)
    await hub.start(seed_from_log=True)
    guest = await writers.get()
    assert hub.text() == "old boot output\n"
    guest.write(b"x" * 100 + b"\nDISKPLANE READY\n")
    end = await hub.wait_for(re.compile(rb"READY\n"), limit=5)
    assert end == hub.end
    assert len(hub.text()) == 64  # oldest bytes dropped
    stream = hub.stream()
    assert (await anext(stream)).endswith(b"DISKPLANE READY\n")
    guest.write(b"tick 1\n")
    assert await anext(stream) == b"tick 1\n"
    await stream.aclose()
    with pytest.raises(ConsoleError, match="did not print 'never'"):
        await hub.wait_for("never", since=end, limit=0.2)
    guest.close()
    await hub.close()


async def test_a_client_that_lags_loses_its_stream_not_the_hub(
    guest_side: tuple[Path, asyncio.Queue[asyncio.StreamWriter]],
) -> None:
    sock, writers = guest_side
    hub = ConsoleHub(sock, sock.with_name("serial.log"), vm="t/lag", backlog_bytes=1024)
    await hub.start()
    guest = await writers.get()
    guest.write(b"hello\n")
    await hub.wait_for("hello\n", limit=5)
    stream = hub.stream()
    assert await anext(stream) == b"hello\n"  # registered from here on
    for i in range(CLIENT_QUEUE_CHUNKS * 2):
        guest.write(f"line {i}\n".encode())
        await guest.drain()
        await hub.wait_for(f"line {i}\n", limit=5)
    chunks = [chunk async for chunk in stream]  # ends: the hub dropped this slow client
    assert len(chunks) <= CLIENT_QUEUE_CHUNKS
    await hub.write(b"input")
    guest.close()
    await hub.close()


async def test_event_bus_subscribers_are_bounded() -> None:
    bus = EventBus()
    slow = bus.subscribe()
    fast = bus.subscribe()
    for i in range(SUBSCRIBER_QUEUE + 1):
        bus.publish({"n": i})
        if (await fast.get()) is None:
            raise AssertionError("the fast subscriber was dropped")
    assert bus.dropped_subscribers == 1
    items = []
    while (item := await slow.get()) is not None:
        items.append(item)
    assert len(items) == SUBSCRIBER_QUEUE - 1
    bus.close()
    assert await fast.get() is None
