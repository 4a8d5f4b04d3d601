"""``UploadSource``: a Source over bytes that arrive in HTTP requests (the importer's uploads).

The importer service's upload handler feeds an :class:`UploadStream` (a
bounded buffer of pieces, so a fast client waits for the decoder rather
than filling memory) and the pipeline reads it through ``UploadSource`` as
an ordinary sequential source: decompression, checksum and sparse writes
happen as the bytes arrive, without a staged copy. A dropped request leaves
the stream open; the next request continues it where it stopped (the
decoder and hash state live on in memory). The stream can be read once:
a pipeline retry that would start over cannot, and fails finally.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncGenerator

from cdi.errors import FinalImportError
from cdi.formats.detect import HEADER_BYTES, detect_compression, detect_format
from cdi.sources.base import SourceInfo


class UploadAbandoned(FinalImportError):
    """The upload stopped sending (no continuation in time) or was closed."""

    reason = "UploadAbandoned"


def streamable(head: bytes) -> bool:
    """Whether the pipeline decodes this image from a sequential stream without a scratch
    copy of its own: raw/iso, or compressed (the inner format is found while decoding)."""
    return detect_compression(head) is not None or detect_format(head) in ("raw", "iso")


class UploadStream:
    """One upload's bytes in flight: one producer (the requests), one consumer (the pipeline)."""

    def __init__(
        self, head: bytes, total: int | None, *, max_pieces: int, resume_timeout: float
    ) -> None:
        self.head = head[:HEADER_BYTES]
        self.total = total
        self.received = len(head)
        self.ended = False
        self.consumed = False
        self._pieces: collections.deque[bytes] = collections.deque([head] if head else [])
        self._max = max_pieces
        self._resume_timeout = resume_timeout
        self._closed: str | None = None
        self._space = asyncio.Event()
        self._data = asyncio.Event()

    @property
    def closed(self) -> bool:
        """The reading side is gone (the import ended)."""
        return self._closed is not None

    async def put(self, data: bytes) -> bool:
        """Queue ``data``; False when the reading side has closed the stream."""
        while self._closed is None and len(self._pieces) >= self._max:
            self._space.clear()
            await self._space.wait()
        if self._closed is not None:
            return False
        self._pieces.append(data)
        self.received += len(data)
        self._data.set()
        return True

    def end(self) -> None:
        """Every byte has arrived."""
        self.ended = True
        self._data.set()

    def close(self, why: str) -> None:
        """No more reading or writing (called on the event loop)."""
        if self._closed is None:
            self._closed = why
        self._data.set()
        self._space.set()

    async def get(self, what: str) -> bytes | None:
        """The next piece; None at the end. Waits at most the resume timeout for one."""
        while not self._pieces and not self.ended and self._closed is None:
            self._data.clear()
            try:
                async with asyncio.timeout(self._resume_timeout):
                    await self._data.wait()
            except TimeoutError:
                raise UploadAbandoned(
                    f"{what} stopped at byte {self.received} and no continuation arrived "
                    f"within {self._resume_timeout:g} s; start the upload again"
                ) from None
        if self._pieces:
            piece = self._pieces.popleft()
            self._space.set()
            return piece
        if self.ended:
            return None
        raise UploadAbandoned(f"{what} was abandoned: {self._closed}")


class UploadSource:
    """The pipeline's view of an :class:`UploadStream`: sequential, no ranges."""

    def __init__(self, stream: UploadStream, description: str) -> None:
        self.description = description
        self._stream = stream

    async def probe(self) -> SourceInfo:
        return SourceInfo(self._stream.total, False, None, self._stream.head)

    async def stream(self, start: int, end: int | None) -> AsyncGenerator[bytes, None]:
        if start != 0 or self._stream.consumed:
            raise UploadAbandoned(
                f"{self.description} broke off inside the import and its bytes can be read "
                "only once; start the upload again"
            )
        self._stream.consumed = True
        while (piece := await self._stream.get(self.description)) is not None:
            yield piece

    async def aclose(self) -> None:
        self._stream.close("the import ended")
