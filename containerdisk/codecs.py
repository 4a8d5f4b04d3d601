"""Layer compression: gzip and zstd, compressed in independent blocks, decompressed bounded.

Push compresses each block (a few MiB) on its own, as a gzip member or a zstd
frame, so blocks compress in parallel threads; the concatenation is a valid
multi-member gzip / multi-frame zstd stream that every runtime reads.

Pull decompresses in a worker thread whose output comes out in bounded pieces
(:data:`OUTPUT_PIECE` bytes at most), so a decompression bomb or a sparse disk's
long zero runs never inflate memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Generator
from typing import IO, Any, Literal, cast

import zstandard
from isal import isal_zlib as zlib  # zlib-compatible API, ISA-L speed

from containerdisk.errors import UnsafeLayer

Compression = Literal["gzip", "zstd", "none"]
COMPRESSIONS: tuple[Compression, ...] = ("gzip", "zstd", "none")
GZIP_LEVEL = 1  # ISA-L levels are 0-3; 1 is its fast default with zlib-like ratios
ZSTD_LEVEL = 3
OUTPUT_PIECE = 1024 * 1024
OUTPUT_BATCH = 4  # pieces handed over per thread hop (one batch out, the next being made: 8 MiB)
_INPUT_QUEUE = 4
WAKE_INTERVAL = 0.1  # seconds a blocked decompress-side wait sleeps before checking for close
_GZIP_ERROR = cast(type[Exception], zlib.error)
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def compress_block(compression: Compression, data: bytes) -> bytes:
    """One independent gzip member / zstd frame (or the bytes themselves for ``none``)."""
    if compression == "gzip":
        co = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        return co.compress(data) + co.flush()
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress(data)
    return data


def sniff(head: bytes) -> Compression:
    """The compression a stream's first bytes announce."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return "none"


class _InputClosed(Exception):
    """The inbox was closed while the decompress thread waited on it."""


class _Inbox:
    """Compressed chunks from the event loop to the decompress thread.

    A bounded queue with a file-like ``read`` for the thread side. ``None``
    ends the input; ``close`` abandons it. Both blocking sides wait in
    :data:`WAKE_INTERVAL` slices and give up once closed, so no thread can
    outlive its stream, whatever order the two sides stop in (a loop that is
    torn down cancels tasks before it closes async generators).
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_INPUT_QUEUE)
        self._closed = threading.Event()
        self._buffer = b""
        self._pos = 0
        self._eof = False

    def close(self) -> None:
        self._closed.set()

    def put(self, item: bytes | None) -> None:
        """Thread side of the producer: wait for room, unless the inbox is closed."""
        while not self._closed.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=WAKE_INTERVAL)
                return
        raise _InputClosed

    def put_nowait(self, item: bytes | None) -> bool:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return False
        return True

    def read(self, size: int = -1) -> bytes:
        while self._pos >= len(self._buffer) and not self._eof:
            try:
                item = self._queue.get(timeout=WAKE_INTERVAL)
            except queue.Empty:
                if self._closed.is_set():
                    raise _InputClosed from None
                continue
            if item is None:
                self._eof = True
            else:
                self._buffer, self._pos = item, 0
        available = len(self._buffer) - self._pos
        n = available if size < 0 else min(size, available)
        if self._pos == 0 and n == len(self._buffer):
            out = self._buffer
        else:
            out = self._buffer[self._pos : self._pos + n]
        self._pos += n
        return out


def _gunzip(reader: _Inbox) -> Generator[bytes, None, None]:
    dec = zlib.decompressobj(31)
    while True:
        data = dec.unconsumed_tail or dec.unused_data or reader.read(OUTPUT_PIECE)
        if not data:
            if not dec.eof:
                raise UnsafeLayer("gzip stream ends before its last member is complete")
            return
        if dec.eof:  # next member of a multi-member stream
            dec = zlib.decompressobj(31)
        try:
            out = dec.decompress(data, OUTPUT_PIECE)
        except _GZIP_ERROR as exc:
            raise UnsafeLayer(f"gzip stream is corrupt ({exc})") from exc
        if out:
            yield out


def _unzstd(reader: _Inbox) -> Generator[bytes, None, None]:
    dctx = zstandard.ZstdDecompressor()
    with dctx.stream_reader(
        cast(IO[bytes], reader), read_size=OUTPUT_PIECE, read_across_frames=True
    ) as stream:
        while True:
            try:
                out = stream.read(OUTPUT_PIECE)
            except zstandard.ZstdError as exc:
                raise UnsafeLayer(f"zstd stream is corrupt ({exc})") from exc
            if not out:
                return
            yield out


async def decompress(
    source: AsyncIterator[bytes], compression: Compression
) -> AsyncIterator[bytes]:
    """Decompress ``source`` in a worker thread, yielding pieces of at most 1 MiB."""
    if compression == "none":
        try:
            async for chunk in source:
                yield chunk
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()
        return
    inbox = _Inbox()
    gen = _gunzip(inbox) if compression == "gzip" else _unzstd(inbox)

    async def feed() -> None:
        try:
            async for chunk in source:
                await _put(inbox, chunk)
            await _put(inbox, None)
        except BaseException:
            inbox.close()  # the thread stops waiting for input that will not come
            raise

    loop = asyncio.get_running_loop()
    feeder = asyncio.create_task(feed(), name="containerdisk-decompress-feed")
    # A plain executor future, not a task: it stays tied to its thread even if
    # the loop's teardown cancels every task first. Shielded for the same reason.
    pending: asyncio.Future[list[bytes]] | None = None
    try:
        pending = loop.run_in_executor(None, _next_batch, gen)
        while pending is not None:
            try:
                batch = await asyncio.shield(pending)
            except _InputClosed:
                await feeder  # the source's own error is the one to report
                raise
            pending = None
            if len(batch) == OUTPUT_BATCH:  # more may follow: decompress it while we hand out
                pending = loop.run_in_executor(None, _next_batch, gen)
            for piece in batch:
                yield piece
        await feeder
    finally:
        inbox.close()
        feeder.cancel()
        waits: set[asyncio.Future[Any]] = {feeder} if pending is None else {feeder, pending}
        await asyncio.wait(waits)  # bounded: a closed inbox frees both within WAKE_INTERVAL
        for done in waits:
            if not done.cancelled():
                done.exception()  # retrieved: the caller has stopped reading, or already raised it
        gen.close()  # no thread runs it any more
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()  # the source is ours to end, wherever the feeder stopped


def _next_batch(gen: Generator[bytes, None, None]) -> list[bytes]:
    """Up to OUTPUT_BATCH pieces per thread hop; fewer only at the end of the stream."""
    out: list[bytes] = []
    for piece in gen:
        out.append(piece)
        if len(out) == OUTPUT_BATCH:
            break
    return out


async def _put(inbox: _Inbox, item: bytes | None) -> None:
    if not inbox.put_nowait(item):  # the usual case: no thread hop
        await asyncio.to_thread(inbox.put, item)
