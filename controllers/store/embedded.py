"""The embedded store: SQLite in the data dir (``<data_dir>/store.db``).

One writer thread owns the connection; every SQLite call runs there, never on
the event loop. Each write is one transaction that takes the next global
``resourceVersion`` (monotonic, like etcd's revision) and appends to a change
log; after the commit the thread hands the events to the loop, in commit
order, and the loop fans them out to watchers. Watching from a version replays
the change log; versions older than the log's horizon raise ``Gone``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from controllers.api.kinds import ResourceKind
from controllers.errors import Gone, Invalid, StoreUnavailable
from controllers.store import records
from controllers.store.protocol import EventType, Object, ObjectList, WatchEvent
from controllers.store.selectors import LabelSelector, parse_selector

T = TypeVar("T")

DB_NAME = "store.db"
# How many changes the log keeps for watch resumption (etcd keeps ~5 min; we keep a count).
CHANGE_LOG_LIMIT = 20_000
# Events a slow watcher may have pending before it is cut off with Gone (it re-lists).
WATCH_QUEUE_SIZE = 4096
# How often an idle watch checks whether another process (a CLI, `diskplane up`)
# wrote to the same database; writes in this process are delivered at once.
EXTERNAL_CHECK_S = 0.5
# How long a SQLite call waits for a lock held by another process.
BUSY_TIMEOUT_S = 10.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    uid TEXT NOT NULL UNIQUE, rv INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name));
CREATE TABLE IF NOT EXISTS owners (
    owner_uid TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS owners_by_uid ON owners (owner_uid);
CREATE INDEX IF NOT EXISTS owners_by_object ON owners (kind, namespace, name);
CREATE TABLE IF NOT EXISTS changes (
    rv INTEGER PRIMARY KEY, kind TEXT NOT NULL, namespace TEXT NOT NULL,
    type TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_CLOSED = object()
_OVERFLOW = object()


@dataclass(eq=False)
class _Watcher:
    kind: str
    namespace: str | None
    selector: LabelSelector
    queue: asyncio.Queue[object] = field(
        default_factory=lambda: asyncio.Queue(maxsize=WATCH_QUEUE_SIZE)
    )
    overflowed: bool = False
    data_version: int = -1

    def wants(self, kind: str, namespace: str, obj: Object) -> bool:
        if kind != self.kind or (self.namespace is not None and namespace != self.namespace):
            return False
        return self.selector.matches(obj.get("metadata", {}).get("labels"))


class EmbeddedStore:
    """A :class:`~controllers.store.protocol.Store` on SQLite. Open with :meth:`open`."""

    def __init__(self, path: Path, change_log_limit: int = CHANGE_LOG_LIMIT) -> None:
        self.path = path
        self.change_log_limit = change_log_limit
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchers: set[_Watcher] = set()
        self._closed = False
        self.operations = 0  # store calls served, for benchmarks

    @classmethod
    async def open(cls, data_dir: Path, change_log_limit: int = CHANGE_LOG_LIMIT) -> EmbeddedStore:
        store = cls(data_dir / DB_NAME, change_log_limit)
        store._loop = asyncio.get_running_loop()
        await store._run(store._connect)
        return store

    # -- thread plumbing -------------------------------------------------

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes
        conn.executescript(SCHEMA)
        self._conn = conn

    async def _run(self, fn: Callable[..., T], *args: Any, count: bool = True) -> T:
        if self._closed:
            raise StoreUnavailable(f"the embedded store {self.path} is closed")
        self.operations += count
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the embedded store {self.path} failed: {exc}") from exc

    def _write(self, fn: Callable[[records.Tx], T]) -> T:
        """Run ``fn`` in one transaction in the writer thread; publish its events after commit."""
        assert self._conn is not None
        tx = records.Tx(self._conn)
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(tx)
            tx.trim_log(self.change_log_limit)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        if tx.events and self._loop is not None:
            self._loop.call_soon_threadsafe(self._publish, tx.events)
        return result

    def _publish(self, events: list[tuple[str, str, WatchEvent]]) -> None:
        for kind, namespace, event in events:
            for watcher in list(self._watchers):
                if watcher.overflowed or not watcher.wants(kind, namespace, event.object):
                    continue
                try:
                    watcher.queue.put_nowait(event)
                except asyncio.QueueFull:
                    watcher.overflowed = True
                    watcher.queue.get_nowait()
                    watcher.queue.put_nowait(_OVERFLOW)

    # -- the Store protocol ----------------------------------------------

    async def get(self, kind: ResourceKind, namespace: str, name: str) -> Object:
        return await self._run(lambda: records.Tx(self._db()).get(kind, namespace, name))

    async def list(
        self, kind: ResourceKind, namespace: str | None = None, label_selector: str = ""
    ) -> ObjectList:
        selector = parse_selector(label_selector)
        items, rv = await self._run(lambda: records.Tx(self._db()).snapshot(kind, namespace))
        matching = [o for o in items if selector.matches(o["metadata"].get("labels"))]
        return ObjectList(matching, str(rv))

    async def create(self, kind: ResourceKind, obj: Object) -> Object:
        return await self._run(self._write, lambda tx: tx.create(kind, obj))

    async def update(self, kind: ResourceKind, obj: Object) -> Object:
        return await self._run(self._write, lambda tx: tx.update(kind, obj))

    async def patch_status(
        self,
        kind: ResourceKind,
        namespace: str,
        name: str,
        status: Object,
        resource_version: str = "",
    ) -> Object:
        return await self._run(
            self._write, lambda tx: tx.patch_status(kind, namespace, name, status, resource_version)
        )

    async def delete(self, kind: ResourceKind, namespace: str, name: str) -> Object | None:
        return await self._run(self._write, lambda tx: tx.delete(kind, namespace, name))

    async def watch(
        self,
        kind: ResourceKind,
        namespace: str | None = None,
        resource_version: str = "",
        label_selector: str = "",
    ) -> AsyncIterator[WatchEvent]:
        watcher = _Watcher(str(kind), namespace, parse_selector(label_selector))
        self._watchers.add(watcher)
        try:
            replay: builtins.list[WatchEvent]
            if resource_version:
                last = _parse_rv(resource_version)
                replay = await self._run(self._replay, watcher, last)
            else:
                items, last = await self._run(
                    lambda: records.Tx(self._db()).snapshot(kind, namespace)
                )
                replay = [WatchEvent(EventType.ADDED, o) for o in items]
            for event in replay:
                if watcher.selector.matches(event.object["metadata"].get("labels")):
                    yield event
                last = max(last, int(event.resource_version))
            while True:
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                    # cancellation that lands as the queue yields, and the watch never ends.
                    async with asyncio.timeout(EXTERNAL_CHECK_S):
                        item = await watcher.queue.get()
                except TimeoutError:
                    for event in await self._run(self._external, watcher, last, count=False):
                        last = max(last, int(event.resource_version))
                        yield event
                    continue
                if item is _CLOSED:
                    return
                if item is _OVERFLOW:
                    raise Gone(f"watch on {kind} fell {WATCH_QUEUE_SIZE} events behind; list again")
                assert isinstance(item, WatchEvent)
                if int(item.resource_version) > last:
                    last = int(item.resource_version)
                    yield item
        finally:
            self._watchers.discard(watcher)

    def _replay(self, watcher: _Watcher, since: int) -> builtins.list[WatchEvent]:
        tx = records.Tx(self._db())
        horizon = tx.counter("compacted")
        if since < horizon:
            raise Gone(
                f"resourceVersion {since} is older than the change log ({horizon}); list again"
            )
        return [
            event
            for kind, namespace, event in tx.changes_since(since)
            if watcher.wants(kind, namespace, event.object)
        ]

    def _external(self, watcher: _Watcher, since: int) -> builtins.list[WatchEvent]:
        """Changes committed by other connections since the last check."""
        version = self._db().execute("PRAGMA data_version").fetchone()[0]
        if version == watcher.data_version:
            return []
        watcher.data_version = version
        return self._replay(watcher, since)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable(f"the embedded store {self.path} is not open")
        return self._conn

    async def close(self) -> None:
        if self._closed:
            return
        for watcher in self._watchers:
            with contextlib.suppress(asyncio.QueueFull):
                watcher.queue.put_nowait(_CLOSED)
        try:
            await self._run(self._disconnect)
        finally:
            self._closed = True
            self._executor.shutdown(wait=True)

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _parse_rv(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise Invalid(f"resourceVersion {text!r} is not one this store issued") from None
