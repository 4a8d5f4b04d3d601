"""The seams between the service and the work it schedules.

``ImportRunner`` is all the scheduler needs from the pipeline: run one job
to the end, report progress, raise :class:`~cdi.service.errors.JobFailed`
(``final`` or not) on failure, and stop promptly when cancelled, leaving
the pipeline's resume journal in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cdi.service.model import ImportJob


class ProgressLike(Protocol):
    """What the service reads from a progress event (``cdi.Progress`` fits)."""

    @property
    def phase(self) -> str: ...

    @property
    def source_bytes_read(self) -> int: ...

    @property
    def source_bytes_total(self) -> int | None: ...

    @property
    def bytes_written(self) -> int: ...


@dataclass(frozen=True)
class ProgressUpdate:
    """A progress event made by the service's own runners (clone)."""

    phase: str
    source_bytes_read: int
    source_bytes_total: int | None
    bytes_written: int


ProgressCallback = Callable[[ProgressLike], None]


@dataclass(frozen=True)
class ImportOutcome:
    """What a finished job reports."""

    source_bytes: int
    bytes_written: int
    resumed: bool = False


class ImportRunner(Protocol):
    async def run(self, job: ImportJob, on_progress: ProgressCallback) -> ImportOutcome:
        """Import ``job`` into its target volume; raise ``JobFailed`` on failure."""
        ...

    def discard(self, job: ImportJob) -> None:
        """Remove what a cancelled or failed job left behind (blocking; run off the loop)."""
        ...

    def volume_exists(self, job: ImportJob) -> bool:
        """Whether the job's target volume is still in the pool."""
        ...
