"""List, then watch; list again when the watch's version is Gone (410).

A :class:`Reflector` keeps a cache of the objects it has seen and turns a
re-list into the events a watcher missed: ADDED/MODIFIED for what changed and
DELETED for what vanished, so a consumer sees a level-consistent stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from controllers.api.kinds import ResourceKind
from controllers.errors import Gone, StoreUnavailable
from controllers.store.protocol import EventType, Object, Store, WatchEvent

Key = tuple[str, str]
log = logging.getLogger(__name__)

# After the store fails (API server unreachable), wait this long before listing
# again; the wait doubles per consecutive failure up to the maximum.
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 30.0


def object_key(obj: Object) -> Key:
    md = obj.get("metadata", {})
    return str(md.get("namespace", "")), str(md.get("name", ""))


class Reflector:
    """``async for event in Reflector(store, kind).events()`` never misses a change."""

    def __init__(
        self,
        store: Store,
        kind: ResourceKind,
        namespace: str | None = None,
        label_selector: str = "",
    ) -> None:
        self.store, self.kind = store, kind
        self.namespace, self.label_selector = namespace, label_selector
        self.cache: dict[Key, Object] = {}
        self.relists = 0

    async def events(self) -> AsyncIterator[WatchEvent]:
        delay = RETRY_INITIAL_S
        while True:
            try:
                listing = await self.store.list(self.kind, self.namespace, self.label_selector)
            except StoreUnavailable as exc:
                log.warning("listing %s failed, retrying in %.1f s: %s", self.kind, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_INITIAL_S
            self.relists += 1
            for event in self._sync(listing.items):
                yield event
            try:
                async for event in self.store.watch(
                    self.kind, self.namespace, listing.resource_version, self.label_selector
                ):
                    self._apply(event)
                    yield event
                return  # the store closed the watch
            except Gone:
                continue
            except StoreUnavailable as exc:  # the stream broke: list again after a pause
                log.warning("watching %s failed, listing again: %s", self.kind, exc)
                await asyncio.sleep(delay)

    def _sync(self, items: list[Object]) -> list[WatchEvent]:
        fresh = {object_key(o): o for o in items}
        events = [WatchEvent(EventType.DELETED, o) for k, o in self.cache.items() if k not in fresh]
        for key, obj in fresh.items():
            old = self.cache.get(key)
            if old is None:
                events.append(WatchEvent(EventType.ADDED, obj))
            elif old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                events.append(WatchEvent(EventType.MODIFIED, obj))
        self.cache = fresh
        return events

    def _apply(self, event: WatchEvent) -> None:
        key = object_key(event.object)
        if event.type == EventType.DELETED:
            self.cache.pop(key, None)
        else:
            self.cache[key] = event.object
