"""The ``Source`` protocol every source kind implements, and helpers they share."""

from __future__ import annotations

import asyncio
import contextlib
import random
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from cdi.errors import RetryableImportError
from cdi.settings import ImportSettings

T = TypeVar("T")


@dataclass(frozen=True)
class SourceInfo:
    """What a probe learned: real byte size, Range support, validator, the head bytes."""

    size: int | None
    supports_ranges: bool
    validator: str | None
    head: bytes
    #: ``stream(start, None)`` continues at ``start`` although random ranges are not
    #: offered (registry disks); a drop within a run then resumes instead of restarting.
    resumable: bool = False


class Source(Protocol):
    """A readable disk source. Errors leave it only as ``cdi.errors`` types."""

    #: For messages and logs: never contains credentials or query strings.
    description: str

    async def probe(self) -> SourceInfo:
        """Learn size, Range support and validator; read the first bytes."""

    def stream(self, start: int, end: int | None) -> AsyncGenerator[bytes, None]:
        """Bytes ``[start, end)`` (to the end when ``end`` is None), in pieces."""

    async def aclose(self) -> None:
        """Release connections and threads."""


def redact_url(url: str) -> str:
    """A URL fit for messages: no userinfo, no query string, no fragment."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    redacted = urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
    return redacted + ("?…" if parts.query else "")


async def read_range(source: Source, start: int, end: int) -> bytes:
    """Collect ``[start, end)`` from a source (no retries; for small metadata reads)."""
    pieces: list[bytes] = []
    async with contextlib.aclosing(source.stream(start, end)) as stream:
        async for piece in stream:
            pieces.append(piece)
    return b"".join(pieces)


class RetryBudget:
    """Counts consecutive failures without progress; sleeps the backoff between them."""

    def __init__(self, settings: ImportSettings) -> None:
        self._settings = settings
        self.failures = 0
        self.total_failures = 0

    def progressed(self) -> None:
        self.failures = 0

    async def failed(self, exc: RetryableImportError) -> None:
        """Sleep before the next attempt, or re-raise once the budget is spent."""
        self.failures += 1
        self.total_failures += 1
        if self.failures > self._settings.max_retries:
            raise exc
        delay = min(
            self._settings.backoff_initial * 2 ** (self.failures - 1), self._settings.backoff_max
        )
        delay *= 0.75 + random.random() / 2  # noqa: S311 - jitter, not crypto
        if exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, self._settings.max_retry_after))
        await asyncio.sleep(delay)


async def with_retries(settings: ImportSettings, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run ``attempt`` until it succeeds or the retry budget is spent."""
    budget = RetryBudget(settings)
    while True:
        try:
            return await attempt()
        except RetryableImportError as exc:
            await budget.failed(exc)
