"""A read-only NBD export of a ranged source, so ``qemu-img convert`` reads it in place.

CDI runs ``nbdkit curl`` in front of ``qemu-img`` for formats it cannot
convert from a stream; this is the same idea inside the import, for any
range-capable source (HTTP, S3, file) and with no scratch copy: qemu-img
opens ``driver=<fmt>,file.driver=nbd,file.path=<socket>`` and every read it
makes becomes a cached, read-ahead ranged fetch.

Protocol: fixed-newstyle handshake (``NBD_OPT_GO`` / ``INFO`` /
``EXPORT_NAME``; everything else, structured replies included, answered
"unsupported", which qemu handles by falling back), then simple replies to
``NBD_CMD_READ`` (served concurrently, answered in any order by handle),
``FLUSH`` and ``DISC``. Writes are refused with EPERM: the export is
read-only. The socket lives in a private (0700) directory.

:class:`ChunkCache` keeps the last few ``chunk_size`` chunks and fetches the
next ones ahead of a sequential reader, so memory stays at ``capacity``
chunks whatever the image.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import shutil
import struct
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cdi.errors import ConversionFailed, ImportError, InvalidImage, SourceUnavailable
from cdi.settings import ImportSettings
from cdi.sources.base import Source, read_range, with_retries
from cdi.transfer import BlockingRanges

NBD_MAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
OPT_EXPORT_NAME, OPT_ABORT, OPT_INFO, OPT_GO = 1, 2, 6, 7
REP_ACK, REP_INFO, REP_ERR_UNSUP = 1, 3, 0x80000001
INFO_EXPORT = 0
TFLAG_HAS_FLAGS, TFLAG_READ_ONLY, TFLAG_SEND_FLUSH = 1, 2, 4
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
MAX_OPTION = 4096  # option payloads we accept (export names, info requests)
MAX_REQUEST = 32 * 1024 * 1024  # qemu's own ceiling for one request
MAX_REPLIES = 16  # reads answered at once (qemu keeps at most 16 in flight)

Fetch = Callable[[int, int], Coroutine[object, object, bytes]]


class ChunkCache:
    """``read(offset, length)`` over ``fetch(start, end)`` in aligned chunks, LRU, read-ahead."""

    def __init__(self, fetch: Fetch, size: int, chunk: int, capacity: int, ahead: int) -> None:
        self._fetch, self.size, self._chunk = fetch, size, chunk
        self._capacity, self._ahead = max(capacity, ahead + 2), ahead
        self._chunks: OrderedDict[int, asyncio.Task[bytes]] = OrderedDict()
        self._furthest = -1  # the furthest chunk read: the front of the forward stream
        #: The first fetch failure: what the import reports when qemu-img then fails.
        self.error: BaseException | None = None

    def cached(self, offset: int, length: int) -> bytes | None:
        """The bytes, if every chunk they span has arrived (a reply without a task)."""
        end = min(offset + length, self.size)
        first, last = offset // self._chunk, (end - 1) // self._chunk
        tasks = [self._chunks.get(i) for i in range(first, last + 1)]
        if not all(t is not None and _arrived(t) for t in tasks):
            return None
        self._note_read(first, last)
        return self._slice([t.result() for t in tasks if t is not None], offset, end)

    async def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        first, last = offset // self._chunk, (end - 1) // self._chunk
        wanted = [self._get(i) for i in range(first, last + 1)]
        self._note_read(first, last)
        try:
            parts = await asyncio.gather(*wanted)
        except Exception as exc:
            self.error = self.error or exc
            raise
        return self._slice(parts, offset, end)

    def _note_read(self, first: int, last: int) -> None:
        """Read ahead of the forward stream only: qemu's vmdk driver re-reads grain
        tables near the start every 32 MiB, and reading ahead of those evicted the
        stream's own chunks (2.8x the file fetched in bench/README.md's profile)."""
        if first >= self._furthest - 1:
            for i in range(last + 1, last + 1 + self._ahead):
                if i * self._chunk < self.size:
                    self._get(i)
        self._furthest = max(self._furthest, last)
        for i in range(first, last + 1):
            if i in self._chunks:
                self._chunks.move_to_end(i)

    def _slice(self, parts: list[bytes], offset: int, end: int) -> bytes:
        start = offset - (offset // self._chunk) * self._chunk
        if len(parts) == 1:
            return parts[0][start : start + end - offset]
        return b"".join(parts)[start : start + end - offset]

    def _get(self, index: int) -> asyncio.Task[bytes]:
        task = self._chunks.get(index)
        if task is None or (task.done() and not _arrived(task)):  # failed: fetch again
            start = index * self._chunk
            end = min(start + self._chunk, self.size)
            task = asyncio.create_task(self._fetch(start, end), name=f"nbd-chunk-{index}")
            self._chunks[index] = task
        self._chunks.move_to_end(index)
        while len(self._chunks) > self._capacity:
            _index, old = self._chunks.popitem(last=False)
            if not old.done():
                self._chunks[_index] = old  # in flight: someone may be waiting for it
                self._chunks.move_to_end(_index, last=False)
                break
        return task

    async def aclose(self) -> None:
        tasks = list(self._chunks.values())
        self._chunks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


class NbdExport:
    """Serves ``cache`` read-only on a private Unix socket while the context is open."""

    def __init__(self, cache: ChunkCache) -> None:
        self._cache = cache
        self._connections: set[asyncio.Task[None]] = set()
        self.socket_path = Path()

    def image_opts(self, driver: str) -> str:
        """The ``--image-opts`` string qemu-img opens the export with."""
        return f"driver={driver},file.driver=nbd,file.path={self.socket_path}"

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[NbdExport]:
        directory = Path(tempfile.mkdtemp(prefix="diskplane-nbd-"))  # short: sun_path is 108 B
        self.socket_path = directory / "export.sock"
        server = await asyncio.start_unix_server(self._accept, path=str(self.socket_path))
        try:
            yield self
        finally:
            server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await server.wait_closed()
            await self._cache.aclose()
            shutil.rmtree(directory, ignore_errors=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if await self._handshake(reader, writer):
                await self._transmit(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away: qemu-img finished or was killed
        finally:
            self._connections.discard(task)
            writer.close()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        flags = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES
        writer.write(NBD_MAGIC + struct.pack(">QH", IHAVEOPT, flags))
        client_flags = struct.unpack(">I", await reader.readexactly(4))[0]
        transmission = TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH
        export = struct.pack(">QH", self._cache.size, transmission)
        while True:
            magic, option, length = struct.unpack(">QII", await reader.readexactly(16))
            if magic != IHAVEOPT or length > MAX_OPTION:
                return False
            await reader.readexactly(length)  # export name / info requests: one export
            if option == OPT_EXPORT_NAME:
                zeroes = b"" if client_flags & FLAG_NO_ZEROES else bytes(124)
                writer.write(export + zeroes)
                return True
            if option in (OPT_INFO, OPT_GO):
                info = struct.pack(">H", INFO_EXPORT) + export
                writer.write(_option_reply(option, REP_INFO, info))
                writer.write(_option_reply(option, REP_ACK))
                if option == OPT_GO:
                    return True
            elif option == OPT_ABORT:
                writer.write(_option_reply(option, REP_ACK))
                return False
            else:
                writer.write(_option_reply(option, REP_ERR_UNSUP))
            await writer.drain()

    async def _transmit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Replies in flight are bounded: a reply task holding its data while it
        # waits in drain() once let a whole image pile up in memory.
        slots = asyncio.Semaphore(MAX_REPLIES)
        async with asyncio.TaskGroup() as replies:
            while True:
                header = await reader.readexactly(28)
                magic, _flags, command, handle, offset, length = struct.unpack(">IHHQQI", header)
                if magic != REQUEST_MAGIC:
                    return
                if command == CMD_DISC:
                    return
                if command == CMD_READ and length <= MAX_REQUEST:
                    await self._answer_read(writer, replies, slots, (handle, offset, length))
                    continue
                if command == CMD_WRITE:
                    await reader.readexactly(length)
                error = 0 if command == CMD_FLUSH else errno.EPERM
                if command not in (CMD_FLUSH, CMD_WRITE):
                    error = errno.EINVAL
                writer.write(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, error, handle))
                await writer.drain()

    async def _answer_read(
        self,
        writer: asyncio.StreamWriter,
        replies: asyncio.TaskGroup,
        slots: asyncio.Semaphore,
        request: tuple[int, int, int],
    ) -> None:
        handle, offset, length = request
        data = self._cache.cached(offset, length) if self._in_range(offset, length) else None
        if data is not None:  # the common case: answered inline, no task, no gather
            writer.writelines((struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, handle), data))
            del data
            await writer.drain()
            return
        await slots.acquire()
        task = replies.create_task(self._read(writer, handle, offset, length))
        task.add_done_callback(lambda _task: slots.release())

    def _in_range(self, offset: int, length: int) -> bool:
        return length > 0 and offset + length <= self._cache.size

    async def _read(
        self, writer: asyncio.StreamWriter, handle: int, offset: int, length: int
    ) -> None:
        if offset + length > self._cache.size:
            writer.write(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, errno.EINVAL, handle))
            return
        try:
            data = await self._cache.read(offset, length) if length else b""
        except Exception:
            writer.write(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, errno.EIO, handle))
            return
        writer.writelines((struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, handle), data))
        del data  # the transport holds what it has not sent; we need not
        await writer.drain()


def _arrived(task: asyncio.Task[bytes]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


def _option_reply(option: int, kind: int, data: bytes = b"") -> bytes:
    return struct.pack(">QIII", REPLY_MAGIC, option, kind, len(data)) + data


@contextlib.asynccontextmanager
async def exported(
    source: Source, size: int, settings: ImportSettings, on_read: Callable[[int], None]
) -> AsyncIterator[NbdExport]:
    """``source`` as an export for the block; a failure there is reported as the source's.

    qemu-img only sees EIO when a fetch fails; the error that caused it (a
    dead server, a 404) is what the import raises instead of qemu-img's.
    """

    ahead = max(1, settings.concurrency)
    blocking = source if isinstance(source, BlockingRanges) and source.blocking_ranges() else None
    # Sources that can fill a buffer on a thread (HTTP) do so: the event loop is
    # then free to answer qemu-img (helper's profile: it was busy 4.4 s of 5.4).
    threads = ThreadPoolExecutor(ahead, "nbd-fetch") if blocking is not None else None

    async def fetch_once(start: int, end: int) -> bytes:
        if blocking is None or threads is None:
            return await read_range(source, start, end)
        buffer = bytearray(end - start)
        got = [0]
        await asyncio.get_running_loop().run_in_executor(
            threads, blocking.fetch_into, start, memoryview(buffer), got.append
        )
        if sum(got) != len(buffer):
            raise SourceUnavailable(
                f"{source.description} ended the range at byte {start + sum(got)} "
                f"instead of {end}; will retry"
            )
        return bytes(buffer)

    async def fetch(start: int, end: int) -> bytes:
        data = await with_retries(settings, lambda: fetch_once(start, end))
        on_read(len(data))
        return data

    cache = ChunkCache(fetch, size, settings.chunk_size, 2 * ahead + 2, ahead)
    try:
        async with NbdExport(cache).serving() as export:
            try:
                yield export
            except (InvalidImage, ConversionFailed):
                if isinstance(cache.error, ImportError):
                    raise cache.error from None  # the source failed, not the image
                raise
    finally:
        if blocking is not None and threads is not None:
            blocking.abort_blocking()  # fetches still in flight return now
            await asyncio.to_thread(threads.shutdown, wait=True, cancel_futures=True)
