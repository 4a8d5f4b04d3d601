"""Errors raised by ``controllers``.

::

    ControllersError
    ├── SchemaError          an object does not fit the API schema (names every bad path)
    ├── ManifestError        a manifest file cannot be read or parsed
    └── StoreError           a store operation failed
        ├── NotFound         no such object
        ├── AlreadyExists    create of a name that is taken
        ├── Conflict         stale resourceVersion (optimistic concurrency)
        ├── Invalid          the server rejected the object (schema, immutable field)
        ├── Gone             a watch's resourceVersion is too old: list again
        └── StoreUnavailable the store cannot be reached or answered nonsense

Third-party errors are translated in one place per dependency:
``controllers.store.kubernetes._translate`` (``kubernetes.client.ApiException``,
urllib3) and ``controllers.store.embedded`` (``sqlite3``).
"""

from __future__ import annotations

from collections.abc import Sequence


class ControllersError(Exception):
    """Base of every error ``controllers`` raises."""


class SchemaError(ControllersError):
    """An object does not fit the schema; ``problems`` lists ``path: reason`` sentences."""

    def __init__(self, what: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n  ".join(self.problems)
        super().__init__(f"{what} is not valid:\n  {lines}")


class ManifestError(ControllersError):
    """A manifest (file, directory or stdin) cannot be read or parsed."""


class StoreError(ControllersError):
    """A store operation failed."""


class NotFound(StoreError):
    """The object does not exist."""


class AlreadyExists(StoreError):
    """An object with that name already exists."""


class Conflict(StoreError):
    """The object changed since it was read (stale resourceVersion)."""


class Invalid(StoreError):
    """The store rejected the object's content."""


class Gone(StoreError):
    """The requested resourceVersion is no longer available; list again and watch from there."""


class StoreUnavailable(StoreError):
    """The store cannot be reached, or answered something unusable."""
