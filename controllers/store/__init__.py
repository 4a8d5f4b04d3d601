"""Stores: where resources live. One protocol, two implementations.

- :class:`EmbeddedStore`: SQLite in the data dir, for one machine.
- :class:`KubernetesStore`: a real Kubernetes API server (CRDs from charts/).
"""

from controllers.store.embedded import EmbeddedStore
from controllers.store.protocol import EventType, Object, ObjectList, Store, WatchEvent, merge_patch
from controllers.store.selectors import LabelSelector, SelectorError, parse_selector

__all__ = [
    "EmbeddedStore",
    "EventType",
    "LabelSelector",
    "Object",
    "ObjectList",
    "SelectorError",
    "Store",
    "WatchEvent",
    "merge_patch",
    "parse_selector",
]
