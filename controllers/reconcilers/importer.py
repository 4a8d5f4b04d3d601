"""The seam between the DataVolume reconciler and whatever performs imports.

``diskplane up`` uses :class:`~controllers.reconcilers.service_importer.ServiceImporter`
(the importer service over HTTP); :class:`~controllers.reconcilers.local_importer.LocalImporter`
runs ``cdi.run_import`` in this process (tests, ``diskplane controllers``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

Key = tuple[str, str]


class ImportState(StrEnum):
    SCHEDULED = "Scheduled"
    UPLOAD_READY = "UploadReady"  # an upload target waiting for the user's bytes
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class ImportJob:
    """Import ``source`` (a DataVolume ``spec.source`` mapping) into volume namespace/name."""

    namespace: str
    name: str
    uid: str
    size: int
    source: Mapping[str, Any]
    preallocation: bool = False
    # The source's secretRef, resolved: CDI's keys (accessKeyId/secretKey, ...).
    credentials: Mapping[str, str] | None = field(default=None, repr=False)

    @property
    def key(self) -> Key:
        return self.namespace, self.name


@dataclass(frozen=True)
class ImportStatus:
    state: ImportState
    progress: str = "N/A"  # CDI's "45.00%" string
    bytes_done: int = 0
    bytes_total: int | None = None
    restarts: int = 0
    reason: str = ""  # a CDI-like condition reason on failure (ChecksumError, ...)
    message: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


class Importer(Protocol):
    def set_listener(self, listener: Callable[[Key], None]) -> None:
        """``listener(key)`` is called whenever a job's status changes."""

    async def ensure(self, job: ImportJob) -> ImportStatus:
        """Start ``job`` unless it runs or ran; return its current status (idempotent)."""

    async def cancel(self, namespace: str, name: str) -> None:
        """Stop the job if it runs and remove its volume (idempotent)."""

    async def close(self) -> None:
        """Stop every job this importer started."""


async def cancel_tasks(tasks: Iterable[asyncio.Task[None] | None]) -> None:
    """Cancel an importer's per-volume watch/run tasks and wait for them to end."""
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    await asyncio.gather(*live, return_exceptions=True)
