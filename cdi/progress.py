"""Progress events: phase, real source bytes read / total, bytes written, rate, ETA."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

Phase = Literal["probe", "transfer", "convert", "resize", "verify", "done"]
PHASES: tuple[Phase, ...] = ("probe", "transfer", "convert", "resize", "verify", "done")


@dataclass(frozen=True)
class Progress:
    """One snapshot; totals are real source bytes, never an image's virtual size."""

    phase: Phase
    source_bytes_read: int = 0
    source_bytes_total: int | None = None
    bytes_written: int = 0
    rate: float = 0.0
    eta_seconds: float | None = None

    @property
    def percent(self) -> float | None:
        if self.phase == "done":
            return 100.0
        if not self.source_bytes_total:
            return None
        return min(100.0, 100.0 * self.source_bytes_read / self.source_bytes_total)

    @property
    def cdi_progress(self) -> str:
        """CDI's DataVolume ``status.progress`` string."""
        if self.phase == "done":
            return "100.0%"
        pct = self.percent
        return "N/A" if pct is None else f"{pct:.2f}%"


ProgressCallback = Callable[[Progress], None]


class ProgressTracker:
    """Accumulates counters and emits throttled :class:`Progress` events."""

    def __init__(self, callback: ProgressCallback | None, interval: float) -> None:
        self._callback = callback
        self._interval = interval
        self._last_emit = 0.0
        self._started = time.monotonic()
        self._base_read = 0  # bytes already done when this run started (resume)
        self.snapshot = Progress("probe")

    def phase(self, phase: Phase) -> None:
        self.snapshot = replace(self.snapshot, phase=phase)
        self._emit()

    def set_total(self, total: int | None, already_read: int = 0) -> None:
        self._started = time.monotonic()
        self._base_read = already_read
        self.snapshot = replace(
            self.snapshot, source_bytes_total=total, source_bytes_read=already_read
        )

    def add(self, read: int = 0, written: int = 0) -> None:
        snap = self.snapshot
        done = snap.source_bytes_read + read
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = (done - self._base_read) / elapsed
        eta = None
        if snap.source_bytes_total is not None and rate > 0:
            eta = max(0.0, (snap.source_bytes_total - done) / rate)
        self.snapshot = replace(
            snap,
            source_bytes_read=done,
            bytes_written=snap.bytes_written + written,
            rate=rate,
            eta_seconds=eta,
        )
        if time.monotonic() - self._last_emit >= self._interval:
            self._emit()

    def rewind(self) -> None:
        """A sequential stream restarted from byte 0."""
        self.snapshot = replace(self.snapshot, source_bytes_read=0)
        self._base_read = 0
        self._started = time.monotonic()

    def _emit(self) -> None:
        self._last_emit = time.monotonic()
        if self._callback is not None:
            self._callback(self.snapshot)
