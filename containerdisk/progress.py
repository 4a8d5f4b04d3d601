"""Progress display for the CLI: a bar on a terminal, one line per phase otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 30
REDRAW_INTERVAL = 0.2  # seconds between terminal redraws
MIN_RATE_WINDOW = 0.5  # seconds of data before a rate (and ETA) is shown


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class ProgressDisplay:
    """Callable as ``progress(phase, done, total)``; ``finish()`` ends the line."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._phase: str | None = None
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._done = 0
        self._total: int | None = None

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if phase != self._phase:
            self.finish()
            self._phase, self._started = phase, now
            if not self.tty:
                size = f" ({_human(total)})" if total else ""
                print(f"{phase}: started{size}", file=self.stream, flush=True)
        self._done, self._total = done, total
        if self.tty and (now - self._last_draw >= REDRAW_INTERVAL or (total and done >= total)):
            self._last_draw = now
            self.stream.write("\r" + self.line(now) + "\x1b[K")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = now - self._started
        rate = self._done / elapsed if elapsed >= MIN_RATE_WINDOW else 0.0
        text = f"{self._phase}: {_human(self._done)}"
        if self._total:
            frac = min(1.0, self._done / self._total)
            filled = int(frac * BAR_WIDTH)
            eta = (self._total - self._done) / rate if rate > 0 else 0.0
            text = (
                f"{self._phase} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {frac:6.1%} "
                f"{_human(self._done)}/{_human(self._total)}"
            )
            if rate:
                text += f" {_human(rate)}/s ETA {eta:4.0f}s"
        elif rate:
            text += f" {_human(rate)}/s"
        return text

    def finish(self) -> None:
        if self._phase is None:
            return
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K\n")
        else:
            elapsed = time.monotonic() - self._started
            print(
                f"{self._phase}: done, {_human(self._done)} in {elapsed:.1f} s",
                file=self.stream,
                flush=True,
            )
        self._phase = None
