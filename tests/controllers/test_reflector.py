"""Unit test of the reflector's retry when the store is unreachable (a fake store)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from controllers.api import DATAVOLUME
from controllers.errors import StoreUnavailable
from controllers.store import ObjectList, WatchEvent
from controllers.store import reflector as reflector_module
from controllers.store.reflector import Reflector


class FlakyStore:
    """Fails ``list`` twice, then lists one object; its watch ends at once."""

    def __init__(self) -> None:
        self.lists = 0

    async def list(self, kind: Any, namespace: Any = None, label_selector: str = "") -> ObjectList:
        self.lists += 1
        if self.lists <= 2:
            raise StoreUnavailable("the API server at https://127.0.0.1:1 failed: refused")
        obj = {"metadata": {"name": "a", "namespace": "default", "resourceVersion": "5"}}
        return ObjectList([obj], "5")

    async def watch(self, *args: Any, **kwargs: Any) -> AsyncIterator[WatchEvent]:
        return
        yield  # an async generator that ends at once


async def test_reflector_lists_again_after_the_store_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reflector_module, "RETRY_INITIAL_S", 0.01)
    store = FlakyStore()
    events = [e async for e in Reflector(store, DATAVOLUME).events()]  # type: ignore[arg-type]
    assert store.lists == 3
    assert [(e.type, e.object["metadata"]["name"]) for e in events] == [("ADDED", "a")]
