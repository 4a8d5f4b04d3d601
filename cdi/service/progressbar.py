"""A terminal progress line (bytes, %, rate, ETA); one line per 10 % when not a tty."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


class ProgressBar:
    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self._start = time.monotonic()
        self._last_decile = -1

    def update(self, done: int, total: int | None) -> None:
        elapsed = max(time.monotonic() - self._start, 1e-6)
        rate = done / elapsed
        if total:
            percent = done / total * 100
            eta = (total - done) / rate if rate > 0 else 0.0
            text = (
                f"{self.label}: {human(done)} / {human(total)} {percent:5.1f}% "
                f"{human(rate)}/s ETA {eta:4.0f}s"
            )
        else:
            percent = 0.0
            text = f"{self.label}: {human(done)} {human(rate)}/s"
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()
        elif int(percent // 10) > self._last_decile:
            self._last_decile = int(percent // 10)
            self.stream.write(text + "\n")

    def line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(f"{self.label}: {text}\n")
        self.stream.flush()
