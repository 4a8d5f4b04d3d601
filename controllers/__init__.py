"""controllers: API types, stores, reconcilers and the ``diskplane`` command line.

The public surface is below; ``controllers.api`` (kinds, enums, schema),
``controllers.store`` (stores, reflector, leader election) and
``controllers.store.kubernetes`` (the cluster store; imports the kubernetes
client) hold the rest. See docs/controllers.md.
"""

from controllers.api import (
    DATAVOLUME,
    VIRTUALMACHINE,
    VIRTUALMACHINEINSTANCE,
    ResourceKind,
    kind_by_name,
    validate_object,
)
from controllers.errors import (
    AlreadyExists,
    Conflict,
    ControllersError,
    Gone,
    Invalid,
    ManifestError,
    NotFound,
    SchemaError,
    StoreError,
    StoreUnavailable,
)
from controllers.store import EmbeddedStore, EventType, ObjectList, Store, WatchEvent
from controllers.store.leader import LeaderElector
from controllers.store.reflector import Reflector

__all__ = [
    "DATAVOLUME",
    "VIRTUALMACHINE",
    "VIRTUALMACHINEINSTANCE",
    "AlreadyExists",
    "Conflict",
    "ControllersError",
    "EmbeddedStore",
    "EventType",
    "Gone",
    "Invalid",
    "LeaderElector",
    "ManifestError",
    "NotFound",
    "ObjectList",
    "Reflector",
    "ResourceKind",
    "SchemaError",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "WatchEvent",
    "kind_by_name",
    "validate_object",
]
