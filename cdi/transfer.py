"""Moving source bytes: concurrent ranged fetches, or one sequential stream.

Both hand bytes to a blocking ``handler`` run on a bounded thread pool (decode,
decompress, write) and feed the optional hasher strictly in source order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

from cdi.checksum import StreamHasher
from cdi.errors import RetryableImportError, SourceUnavailable
from cdi.journal import Journal
from cdi.progress import ProgressTracker
from cdi.settings import ImportSettings, MiB
from cdi.sources.base import RetryBudget, Source
from cdi.tasks import run_named

#: Blocking: put bytes fetched at a source offset where they belong; returns bytes written.
RangeHandler = Callable[[int, bytearray], int]
#: Blocking: bytes already done in an earlier run, re-read locally for hashing.
LocalReader = Callable[[int, int], bytes]
#: Blocking: consume the next piece of a sequential stream; returns bytes written.
StreamHandler = Callable[[bytes], int]


@runtime_checkable
class BlockingRanges(Protocol):
    """A source that can also receive a range straight into a buffer on a thread."""

    def blocking_ranges(self) -> bool: ...

    def fetch_into(self, start: int, view: memoryview, got: Callable[[int], None]) -> None: ...

    def abort_blocking(self) -> None: ...


class BufferPool:
    """Reuses range buffers: a fresh 8 MiB bytearray is zeroed and page-faulted
    on every allocation, which profiled as a fifth of the fetch CPU."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._free: dict[int, list[bytearray]] = {}

    def take(self, size: int) -> bytearray:
        free = self._free.get(size)
        return free.pop() if free else bytearray(size)

    def give(self, buf: bytearray) -> None:
        if sum(len(v) for v in self._free.values()) < self._keep:
            self._free.setdefault(len(buf), []).append(buf)


class _Fill:
    """A range buffer being filled, and how much of it has arrived."""

    def __init__(self, buf: bytearray) -> None:
        self.buf = buf
        self.view = memoryview(buf)
        self.got = 0


def split(size: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk, size)) for s in range(0, size, chunk)]


class RangedTransfer:
    """Fetch ``ranges`` with ``settings.concurrency`` workers; resumable via the journal."""

    def __init__(
        self,
        source: Source,
        ranges: list[tuple[int, int]],
        handler: RangeHandler,
        *,
        settings: ImportSettings,
        tracker: ProgressTracker,
        executor: ThreadPoolExecutor,
        journal: Journal | None,
        datasync: Callable[[], None],
        hasher: StreamHasher | None = None,
        local_reader: LocalReader | None = None,
    ) -> None:
        self._source = source
        self._ranges = ranges
        self._handler = handler
        self._settings = settings
        self._tracker = tracker
        self._executor = executor
        self._journal = journal
        self._datasync = datasync
        self._hasher = hasher
        self._local_reader = local_reader
        self._next = 0
        self._hash_cursor = self._hash_first = self._resume_hash()
        self._fetched: dict[int, bytearray] = {}
        self._changed = asyncio.Condition()
        self._window = max(2 * settings.concurrency, 2)
        self._pool = BufferPool(self._window + settings.decode_threads + settings.concurrency)
        self._blocking = (
            source if isinstance(source, BlockingRanges) and source.blocking_ranges() else None
        )
        self._fetch_threads: ThreadPoolExecutor | None = None

    def _resume_hash(self) -> int:
        """Continue the checksum from the journal's saved state; the first range to hash.

        Done ranges past the saved state must be hashed again: from the volume when
        ``local_reader`` can re-read them (raw), else by fetching them again.
        """
        journal, hasher = self._journal, self._hasher
        if hasher is None or journal is None:
            return 0
        saved, first = journal.hash, 0
        starts = [start for start, _end in self._ranges]
        if saved is not None and saved.bytes_hashed in starts and hasher.restore(saved):
            first = starts.index(saved.bytes_hashed)
        else:
            hasher.reset()
        hashed_to = self._ranges[first][0] if self._ranges else 0
        if self._local_reader is None:
            journal.done = [(s, min(e, hashed_to)) for s, e in journal.done if s < hashed_to]
        journal.hash = hasher.snapshot()
        return first

    def _is_done(self, index: int) -> bool:
        start, end = self._ranges[index]
        return self._journal is not None and self._journal.contains(start, end)

    async def run(self) -> None:
        # Fetchers and writers meet at a small queue, so the network never waits
        # for the disk (and a single connection still overlaps both).
        writers = max(1, self._settings.decode_threads)
        queue: asyncio.Queue[tuple[int, bytearray] | None] = asyncio.Queue(maxsize=writers)
        coros = {"import-fetch": self._fetch_all(queue, writers)}
        for i in range(writers):
            coros[f"import-write-{i}"] = self._write_loop(queue)
        if self._hasher is not None:
            coros["import-hash"] = self._hash_in_order()
        saver = None
        if self._journal is not None:
            saver = asyncio.create_task(self._journal_saver(), name="import-journal")
        if self._blocking is not None:
            self._fetch_threads = ThreadPoolExecutor(
                max_workers=max(1, self._settings.concurrency), thread_name_prefix="import-fetch"
            )
        try:
            await run_named(coros)
        finally:
            await self._stop_fetch_threads()
            if saver is not None:
                saver.cancel()
                await asyncio.gather(saver, return_exceptions=True)
            await self._save_journal()

    async def _stop_fetch_threads(self) -> None:
        if self._fetch_threads is None:
            return
        assert self._blocking is not None
        self._blocking.abort_blocking()  # a failed import does not wait for reads
        await asyncio.to_thread(self._fetch_threads.shutdown, wait=True, cancel_futures=True)
        self._fetch_threads = None

    async def _fetch_all(
        self, queue: asyncio.Queue[tuple[int, bytearray] | None], writers: int
    ) -> None:
        fetchers = max(1, self._settings.concurrency)
        await run_named({f"import-fetch-{i}": self._fetcher(queue) for i in range(fetchers)})
        for _ in range(writers):
            await queue.put(None)

    async def _take(self) -> int | None:
        async with self._changed:
            while True:
                while self._next < len(self._ranges) and self._is_done(self._next):
                    self._next += 1
                if self._next >= len(self._ranges):
                    return None
                if self._hasher is None or self._next < self._hash_cursor + self._window:
                    index = self._next
                    self._next += 1
                    return index
                await self._changed.wait()

    async def _fetcher(self, queue: asyncio.Queue[tuple[int, bytearray] | None]) -> None:
        while (index := await self._take()) is not None:
            start, end = self._ranges[index]
            await queue.put((index, await self._fetch(start, end)))

    async def _write_loop(self, queue: asyncio.Queue[tuple[int, bytearray] | None]) -> None:
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            index, data = item
            start, end = self._ranges[index]
            written = await loop.run_in_executor(self._executor, self._handler, start, data)
            self._tracker.add(written=written)
            if self._journal is not None:
                self._journal.add(start, end)
            async with self._changed:
                if self._hasher is not None and index >= self._hash_first:
                    self._fetched[index] = data
                else:
                    self._pool.give(data)
                self._changed.notify_all()

    async def _fetch(self, start: int, end: int) -> bytearray:
        # One buffer of the final size: growing a bytearray piece by piece copies
        # every byte about eight times, on the event loop's thread.
        fill = _Fill(self._pool.take(end - start))
        budget = RetryBudget(self._settings)
        try:
            while fill.got < len(fill.buf):
                before = fill.got
                try:
                    await self._fetch_into(fill, start)
                except RetryableImportError as exc:
                    if fill.got > before:
                        budget.progressed()
                    await budget.failed(exc)
        finally:
            fill.view.release()
        return fill.buf

    async def _fetch_into(self, fill: _Fill, start: int) -> None:
        """Continue filling from ``fill.got``; a drop keeps what arrived."""
        end = start + len(fill.buf)
        if self._blocking is not None and self._fetch_threads is not None:
            await self._fetch_blocking(fill, start)
        else:
            await self._fetch_stream(fill, start)
        if fill.got < len(fill.buf):
            raise SourceUnavailable(
                f"{self._source.description} ended the range at byte {start + fill.got} "
                f"instead of {end}; will retry"
            )

    async def _fetch_blocking(self, fill: _Fill, start: int) -> None:
        assert self._blocking is not None
        loop = asyncio.get_running_loop()

        def got(n: int) -> None:  # on a fetch thread; the loop reads fill.got afterwards
            fill.got += n

        before = fill.got

        # The slice is not released here: after a cancellation the thread may still
        # hold it until _stop_fetch_threads has shut its socket.
        view = fill.view[fill.got :]
        try:
            await loop.run_in_executor(
                self._fetch_threads, self._blocking.fetch_into, start + fill.got, view, got
            )
        finally:  # progress once per range: a wake-up per read cost more than it told
            self._tracker.add(read=fill.got - before)

    async def _fetch_stream(self, fill: _Fill, start: int) -> None:
        end = start + len(fill.buf)
        async with contextlib.aclosing(self._source.stream(start + fill.got, end)) as stream:
            async for piece in stream:
                take = min(len(piece), len(fill.buf) - fill.got)
                fill.view[fill.got : fill.got + take] = (
                    piece if take == len(piece) else piece[:take]
                )
                fill.got += take
                self._tracker.add(read=take)

    async def _hash_in_order(self) -> None:
        assert self._hasher is not None
        loop = asyncio.get_running_loop()
        for index in range(self._hash_first, len(self._ranges)):
            start, end = self._ranges[index]
            if self._is_done(index) and index not in self._fetched:
                assert self._local_reader is not None
                data: bytes | bytearray = await loop.run_in_executor(
                    self._executor, self._local_reader, start, end
                )
            else:
                async with self._changed:
                    while index not in self._fetched:
                        await self._changed.wait()
                    data = self._fetched.pop(index)
            await loop.run_in_executor(self._executor, self._hasher.update, data)
            if isinstance(data, bytearray):
                self._pool.give(data)
            if self._journal is not None:
                self._journal.hash = self._hasher.snapshot()  # consistent: between updates
            async with self._changed:
                self._hash_cursor = index + 1
                self._changed.notify_all()

    async def _journal_saver(self) -> None:
        while True:
            await asyncio.sleep(self._settings.journal_interval)
            await self._save_journal()

    async def _save_journal(self) -> None:
        if self._journal is None:
            return
        snapshot, hashed = list(self._journal.done), self._journal.hash
        await asyncio.to_thread(self._datasync)
        saved = Journal(self._journal.path, self._journal.identity, snapshot, hashed)
        await asyncio.to_thread(saved.save)


class SequentialTransfer:
    """One stream from start to end; a drop resumes at the current offset when the
    source supports ranges, otherwise the whole stream (and ``restart``) starts over."""

    #: Pieces are joined up to this size before one trip to the thread pool.
    BATCH = 4 * MiB

    def __init__(
        self,
        source: Source,
        size: int | None,
        supports_ranges: bool,
        handler: StreamHandler,
        restart: Callable[[], None],
        *,
        settings: ImportSettings,
        tracker: ProgressTracker,
        executor: ThreadPoolExecutor,
        hasher: StreamHasher | None,
        start: int = 0,
    ) -> None:
        self._source = source
        self._size = size
        self._ranges = supports_ranges
        self._handler = handler
        self._restart = restart
        self._settings = settings
        self._tracker = tracker
        self._executor = executor
        self._hasher = hasher
        self.position = start  # > 0: an earlier run's bytes are on disk (see ImportJob)

    async def run(self) -> None:
        budget = RetryBudget(self._settings)
        while True:
            try:
                await self._attempt(budget)
                return
            except RetryableImportError as exc:
                await budget.failed(exc)
                if not self._ranges and self.position:
                    self.position = 0
                    self._tracker.rewind()
                    if self._hasher is not None:
                        self._hasher.reset()
                    await asyncio.get_running_loop().run_in_executor(self._executor, self._restart)

    async def _attempt(self, budget: RetryBudget) -> None:
        queue: asyncio.Queue[bytes | RetryableImportError | None] = asyncio.Queue(maxsize=16)
        await run_named(
            {
                "import-stream-read": self._read(queue, budget),
                "import-stream-decode": self._consume(queue),
            }
        )
        if self._size is not None and self.position < self._size:
            raise SourceUnavailable(
                f"{self._source.description} ended at byte {self.position} of {self._size}; "
                "will retry"
            )

    async def _read(
        self, queue: asyncio.Queue[bytes | RetryableImportError | None], budget: RetryBudget
    ) -> None:
        # A retryable error travels through the queue so that every byte read
        # before it is fed first and ``position`` stays exact.
        try:
            async with contextlib.aclosing(self._source.stream(self.position, None)) as stream:
                async for piece in stream:
                    await queue.put(piece)
                    budget.progressed()
        except RetryableImportError as exc:
            await queue.put(exc)
            return
        await queue.put(None)

    async def _consume(self, queue: asyncio.Queue[bytes | RetryableImportError | None]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await queue.get()
            batch: list[bytes] = []
            size = 0
            while isinstance(item, bytes):
                batch.append(item)
                size += len(item)
                if size >= self.BATCH or queue.empty():
                    break
                item = queue.get_nowait()
            if batch:
                data = b"".join(batch)
                written = await loop.run_in_executor(self._executor, self._feed, data)
                self.position += len(data)
                self._tracker.add(read=len(data), written=written)
            if item is None:
                return
            if isinstance(item, RetryableImportError):
                raise item

    def _feed(self, data: bytes) -> int:
        if self._hasher is not None:
            self._hasher.update(data)
        return self._handler(data)
