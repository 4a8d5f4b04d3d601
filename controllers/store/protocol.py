"""The store contract every implementation meets (embedded SQLite, Kubernetes API).

Objects are plain JSON-like dicts in Kubernetes' unstructured shape
(``apiVersion``, ``kind``, ``metadata``, ``spec``, ``status``); ``resourceVersion``
is an opaque string. The semantics follow the Kubernetes API:

- ``update`` replaces spec/metadata and fails with ``Conflict`` when the object's
  ``metadata.resourceVersion`` is stale; it never changes ``status`` of a kind
  with a status subresource (every custom kind has one).
- ``patch_status`` merge-patches (RFC 7386) ``status`` only; with
  ``resource_version`` it is conditional.
- ``delete`` of an object with finalizers sets ``deletionTimestamp`` and leaves
  it; the object goes once an update empties ``finalizers``. Dependents whose
  every ``ownerReferences`` owner is gone are deleted in the background.
- ``watch`` yields events after ``resource_version`` (or from now), and raises
  ``Gone`` when that version is too old: list again, then watch from the list's
  version (``controllers.store.reflector`` does exactly that).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from controllers.api.kinds import ResourceKind

Object = dict[str, Any]


class EventType(StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"
    BOOKMARK = "BOOKMARK"


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    object: Object

    @property
    def resource_version(self) -> str:
        return str(self.object.get("metadata", {}).get("resourceVersion", ""))


@dataclass(frozen=True)
class ObjectList:
    items: list[Object]
    resource_version: str


class Store(Protocol):
    """Where resources live. Every method is safe to call from the event loop."""

    async def get(self, kind: ResourceKind, namespace: str, name: str) -> Object: ...

    async def list(
        self, kind: ResourceKind, namespace: str | None = None, label_selector: str = ""
    ) -> ObjectList: ...

    def watch(
        self,
        kind: ResourceKind,
        namespace: str | None = None,
        resource_version: str = "",
        label_selector: str = "",
    ) -> AsyncIterator[WatchEvent]: ...

    async def create(self, kind: ResourceKind, obj: Object) -> Object: ...

    async def update(self, kind: ResourceKind, obj: Object) -> Object: ...

    async def patch_status(
        self,
        kind: ResourceKind,
        namespace: str,
        name: str,
        status: Object,
        resource_version: str = "",
    ) -> Object: ...

    async def delete(self, kind: ResourceKind, namespace: str, name: str) -> Object | None: ...

    async def close(self) -> None: ...


def meta(obj: Object) -> dict[str, Any]:
    """``obj["metadata"]``, created when missing."""
    metadata = obj.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        raise TypeError("metadata must be a mapping")
    return metadata


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: ``None`` deletes, mappings merge, the rest replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
