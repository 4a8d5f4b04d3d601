"""The blank source: no bytes at all; the pipeline creates a sparse disk of the usable size."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from cdi.sources.base import SourceInfo


class BlankSource:
    """A zero-length raw source; the resize phase gives the disk its size."""

    description = "blank disk"

    async def probe(self) -> SourceInfo:
        return SourceInfo(0, True, "blank", b"")

    async def stream(self, start: int, end: int | None) -> AsyncGenerator[bytes, None]:
        empty: tuple[bytes, ...] = ()
        for piece in empty:
            yield piece

    async def aclose(self) -> None:
        return None
