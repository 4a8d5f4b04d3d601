"""Volume-to-volume copy for the ``pvc`` source.

The copy itself (reflink, else sparse extent copy) and the writer check
live in :mod:`cdi.diskcopy`, shared with the pipeline's persistent
containerDisk reuse; this module turns their errors into :class:`CloneError`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cdi import diskcopy
from cdi.diskcopy import allocated_bytes, data_extents
from cdi.errors import VolumeError
from cdi.service.errors import CloneError

__all__ = ["allocated_bytes", "copy_disk", "data_extents", "ensure_not_written"]


def ensure_not_written(path: Path) -> None:
    """Raise :class:`CloneError` when any process has ``path`` open for writing."""
    try:
        diskcopy.ensure_not_written(path)
    except VolumeError as exc:
        raise CloneError(str(exc)) from exc


def copy_disk(source: Path, target: Path, size: int, progress: Callable[[int, int], None]) -> str:
    """See :func:`cdi.diskcopy.copy_disk`; a short source becomes :class:`CloneError`."""
    try:
        return diskcopy.copy_disk(source, target, size, progress)
    except VolumeError as exc:
        raise CloneError(str(exc)) from exc
