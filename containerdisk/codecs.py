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
from collections.abc import AsyncIterator, Iterator
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


class _QueueReader:
    """A blocking file-like over a queue of chunks; None ends it."""

    def __init__(self, source: queue.Queue[bytes | None]) -> None:
        self._queue = source
        self._buffer = b""
        self._pos = 0
        self._eof = False

    def read(self, size: int = -1) -> bytes:
        while self._pos >= len(self._buffer) and not self._eof:
            item = self._queue.get()
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


def _gunzip(reader: _QueueReader) -> Iterator[bytes]:
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


def _unzstd(reader: _QueueReader) -> Iterator[bytes]:
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
    inbox: queue.Queue[bytes | None] = queue.Queue(maxsize=_INPUT_QUEUE)
    reader = _QueueReader(inbox)
    gen = _gunzip(reader) if compression == "gzip" else _unzstd(reader)

    async def feed() -> None:
        async for chunk in source:
            await _put(inbox, chunk)
        await _put(inbox, None)

    feeder = asyncio.create_task(feed(), name="containerdisk-decompress-feed")
    pending: asyncio.Future[list[bytes]] | None = None
    try:
        pending = asyncio.ensure_future(asyncio.to_thread(_next_batch, gen))
        while pending is not None:
            while not pending.done():
                waiters: set[asyncio.Future[Any]] = {pending}
                if not feeder.done():
                    waiters.add(feeder)
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
                    _unblock(inbox)
                    await asyncio.wait({pending})
                    feeder.result()  # the source's own error wins
            batch = pending.result()
            pending = None
            if len(batch) == OUTPUT_BATCH:  # more may follow: decompress it while we hand out
                pending = asyncio.ensure_future(asyncio.to_thread(_next_batch, gen))
            for piece in batch:
                yield piece
        await feeder
    finally:
        feeder.cancel()
        while not feeder.done():
            _unblock(inbox)
            await asyncio.wait({feeder}, timeout=0.05)
        if not feeder.cancelled():
            feeder.exception()  # retrieved: the caller has stopped reading, or already raised it
        if pending is not None:
            if not pending.done():
                _unblock(inbox)
                await asyncio.wait({pending})
            if not pending.cancelled():
                pending.exception()  # the batch we decompressed ahead is not wanted
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()  # the source is ours to end, wherever the feeder stopped


def _next_batch(gen: Iterator[bytes]) -> list[bytes]:
    """Up to OUTPUT_BATCH pieces per thread hop; fewer only at the end of the stream."""
    out: list[bytes] = []
    for piece in gen:
        out.append(piece)
        if len(out) == OUTPUT_BATCH:
            break
    return out


async def _put(inbox: queue.Queue[bytes | None], item: bytes | None) -> None:
    try:
        inbox.put_nowait(item)  # the usual case: no thread hop
    except queue.Full:
        await asyncio.to_thread(inbox.put, item)


def _unblock(inbox: queue.Queue[bytes | None]) -> None:
    """Free a thread blocked putting into or getting from the queue: drain it, then end it."""
    with contextlib.suppress(queue.Empty):
        while True:
            inbox.get_nowait()
    with contextlib.suppress(queue.Full):
        inbox.put_nowait(None)
