"""Local file source: ranged reads in a thread; validator from mtime and size."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator
from pathlib import Path

from cdi.errors import InvalidRequest, SourceChanged, SourceNotFound
from cdi.formats.detect import HEADER_BYTES
from cdi.settings import MiB
from cdi.sources.base import SourceInfo

PIECE = 4 * MiB


class FileSource:
    """A local regular file (or block device) read with pread."""

    def __init__(self, path: Path, description: str | None = None) -> None:
        self.path = path
        self.description = description or str(path)
        self._validator: str | None = None

    def _stat_validator(self) -> tuple[int, str]:
        try:
            st = self.path.stat()
        except FileNotFoundError as exc:
            raise SourceNotFound(f"{self.description} does not exist") from exc
        except OSError as exc:
            raise InvalidRequest(f"{self.description} cannot be read: {exc.strerror}") from exc
        if self.path.is_dir():
            raise InvalidRequest(f"{self.description} is a directory, not a disk image")
        with self.path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
        return size, f"file:{st.st_mtime_ns}:{size}"

    async def probe(self) -> SourceInfo:
        size, validator = await asyncio.to_thread(self._stat_validator)
        self._validator = validator
        head = await asyncio.to_thread(self._pread, 0, min(size, HEADER_BYTES))
        return SourceInfo(size, True, validator, head)

    async def revalidate(self, saved: SourceInfo) -> SourceInfo | None:
        """One stat: ``saved`` (a journalled probe) if size and mtime still match."""
        size, validator = await asyncio.to_thread(self._stat_validator)
        if size != saved.size or validator != saved.validator:
            return None
        self._validator = validator
        return saved

    def _pread(self, offset: int, length: int) -> bytes:
        try:
            with self.path.open("rb") as handle:
                return os.pread(handle.fileno(), length, offset)
        except FileNotFoundError as exc:
            raise SourceNotFound(f"{self.description} disappeared during the import") from exc

    async def stream(self, start: int, end: int | None) -> AsyncGenerator[bytes, None]:
        if self._validator is not None:
            _size, now = await asyncio.to_thread(self._stat_validator)
            if now != self._validator:
                raise SourceChanged(f"{self.description} changed during the import")
        pos = start
        while end is None or pos < end:
            want = PIECE if end is None else min(PIECE, end - pos)
            data = await asyncio.to_thread(self._pread, pos, want)
            if not data:
                return
            pos += len(data)
            yield data

    async def aclose(self) -> None:
        return None
