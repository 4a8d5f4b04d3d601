"""List, then watch; list again when the watch's version is Gone (410).

A :class:`Reflector` keeps a cache of the objects it has seen and turns a
re-list into the events a watcher missed: ADDED/MODIFIED for what changed and
DELETED for what vanished, so a consumer sees a level-consistent stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from controllers.api.kinds import ResourceKind
from controllers.errors import Gone
from controllers.store.protocol import EventType, Object, Store, WatchEvent

Key = tuple[str, str]


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
        while True:
            listing = await self.store.list(self.kind, self.namespace, self.label_selector)
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
