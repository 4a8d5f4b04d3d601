"""The serial console of one VM: one connection to QEMU's socket, shared by many clients.

QEMU's socket chardev serves one client at a time, so the agent holds that
connection and fans out: every client gets the recent backlog (bounded) and
then live output; input from any client goes to the guest. QEMU also appends
everything to ``serial.log``; a re-adopting agent seeds its backlog from the
log's tail (a few bytes may then appear twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

from virtnode.errors import ConsoleError

log = logging.getLogger(__name__)

READ_CHUNK = 4096
#: Chunks queued per console client before that client is dropped as too slow.
CLIENT_QUEUE_CHUNKS = 256
CONNECT_TIMEOUT = 5.0
#: How long typed input may wait for a guest that does not read its serial port.
WRITE_TIMEOUT = 10.0
CONNECT_RETRY_INTERVAL = 0.05


class ConsoleHub:
    def __init__(self, socket_path: Path, log_path: Path, *, vm: str, backlog_bytes: int) -> None:
        self._socket = socket_path
        self._log = log_path
        self._vm = vm
        self._limit = backlog_bytes
        self._backlog = bytearray()
        #: Stream offset of ``_backlog[0]``; grows as old bytes are dropped.
        self._base = 0
        self._changed = asyncio.Condition()
        self._clients: set[asyncio.Queue[bytes | None]] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.closed = False

    @property
    def end(self) -> int:
        """Stream offset just past the newest byte seen."""
        return self._base + len(self._backlog)

    async def start(self, seed_from_log: bool = False) -> None:
        if seed_from_log:
            with contextlib.suppress(OSError):
                self._append(_tail(self._log, self._limit))
        reader, self._writer = await self._connect()
        self._reader_task = asyncio.create_task(self._pump(reader), name=f"console:{self._vm}")

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                while True:
                    try:
                        return await asyncio.open_unix_connection(str(self._socket))
                    except OSError:
                        await asyncio.sleep(CONNECT_RETRY_INTERVAL)
        except TimeoutError as exc:
            raise ConsoleError(
                f"serial console socket {self._socket} of VM {self._vm} did not answer"
            ) from exc

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(READ_CHUNK):
                self._append(chunk)
                for queue in list(self._clients):
                    if queue.full():
                        self._clients.discard(queue)
                        queue.get_nowait()
                        queue.put_nowait(None)  # too slow: end that client's stream
                    else:
                        queue.put_nowait(chunk)
                async with self._changed:
                    self._changed.notify_all()
        except OSError as exc:
            log.info("serial console of VM %s closed: %s", self._vm, exc)
        finally:
            self.closed = True
            for queue in self._clients:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)
            async with self._changed:
                self._changed.notify_all()

    def _append(self, data: bytes) -> None:
        self._backlog += data
        excess = len(self._backlog) - self._limit
        if excess > 0:
            del self._backlog[:excess]
            self._base += excess

    def text(self, since: int = 0) -> str:
        start = max(since - self._base, 0)
        return self._backlog[start:].decode(errors="replace")

    async def wait_for(
        self, needle: str | re.Pattern[bytes], *, since: int = 0, limit: float
    ) -> int:
        """Wait until ``needle`` (text or bytes regex) appears after offset ``since``.

        Returns the stream offset just past the match.
        """
        pattern = (
            needle if isinstance(needle, re.Pattern) else re.compile(re.escape(needle.encode()))
        )
        try:
            async with asyncio.timeout(limit), self._changed:
                while True:
                    start = max(since - self._base, 0)
                    found = pattern.search(self._backlog, start)
                    if found is not None:
                        return self._base + found.end()
                    if self.closed:
                        break
                    await self._changed.wait()
        except TimeoutError:
            pass
        shown = getattr(needle, "pattern", needle)
        raise ConsoleError(
            f"VM {self._vm} did not print {shown!r} within {limit:g} s; "
            f"last output: {self.text()[-300:]!r}"
        )

    async def stream(self) -> AsyncIterator[bytes]:
        """The backlog, then live output, until the console closes or this client lags."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(CLIENT_QUEUE_CHUNKS)
        backlog = bytes(self._backlog)
        self._clients.add(queue)
        try:
            if backlog:
                yield backlog
            if self.closed:
                return
            while (chunk := await queue.get()) is not None:
                yield chunk
        finally:
            self._clients.discard(queue)

    async def write(self, data: bytes) -> None:
        if self._writer is None or self.closed:
            raise ConsoleError(f"serial console of VM {self._vm} is closed")
        self._writer.write(data)
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await self._writer.drain()
        except TimeoutError as exc:
            raise ConsoleError(
                f"the guest of VM {self._vm} did not read console input within {WRITE_TIMEOUT:g} s"
            ) from exc
        except OSError as exc:
            raise ConsoleError(f"serial console of VM {self._vm} failed: {exc}") from exc

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await self._writer.wait_closed()
        self.closed = True


def _tail(path: Path, limit: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(size - limit, 0))
        return fh.read()
