"""controllers' public surface is pinned; the CLI does not import the kubernetes client."""

from __future__ import annotations

import subprocess
import sys

import controllers

EXPECTED = {
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
}


def test_all_is_pinned() -> None:
    assert set(controllers.__all__) == EXPECTED


def test_store_errors_are_controllers_errors() -> None:
    for name in ("NotFound", "Conflict", "AlreadyExists", "Gone", "Invalid", "StoreUnavailable"):
        assert issubclass(getattr(controllers, name), controllers.StoreError)
    assert issubclass(controllers.StoreError, controllers.ControllersError)
    assert issubclass(controllers.SchemaError, controllers.ControllersError)


def test_importing_controllers_leaves_the_kubernetes_client_alone() -> None:
    code = "import sys, controllers, controllers.commands; print('kubernetes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
