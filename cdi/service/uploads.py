"""Upload staging: resumable receipt of an image's bytes before the pipeline imports them.

Bytes land in ``<state_dir>/uploads/<job id>.part``; its length is the
number of bytes received, which is what HEAD reports and where a
``Content-Range`` continuation must start. The file is fsync'd at the end
of every request so an acknowledged byte survives a crash. Once the
declared total has arrived the job is queued and the pipeline imports the
staged file as a ``file`` source (format detection, decompression,
checksum and sparse writing all happen there, in one read). The staged
copy is removed when the job ends.

Staging is only for images that need random access (qcow2, vmdk, ...): an
upload whose first bytes are raw, iso or compressed is *streamed* instead
(:mod:`cdi.sources.upload`): the job starts at once and the pipeline decodes
the request bodies as they arrive; ``streams`` holds those live streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from cdi.service.errors import UploadError
from cdi.sources.upload import UploadStream

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
# Bytes buffered per write; bounds an upload's memory.
WRITE_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class UploadRange:
    """Where a request's body goes: ``start`` offset and the image's total, if known."""

    start: int
    total: int | None


def parse_content_range(header: str | None, content_length: int | None) -> UploadRange:
    """A request's placement; no ``Content-Range`` means the whole image from byte 0."""
    if header is None:
        return UploadRange(0, content_length)
    match = _CONTENT_RANGE.match(header.strip())
    if match is None:
        raise UploadError("Content-Range must look like 'bytes FIRST-LAST/TOTAL'")
    first, last = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if last < first or (total is not None and last >= total):
        raise UploadError("Content-Range is inconsistent", status=416)
    if content_length is not None and content_length != last - first + 1:
        raise UploadError("Content-Range does not match Content-Length")
    return UploadRange(first, total)


class UploadStaging:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._active: set[str] = set()
        self._streams: dict[str, UploadStream] = {}

    def stream(self, job_id: str) -> UploadStream | None:
        """The live stream of a streamed upload (None: staged, or not started)."""
        return self._streams.get(job_id)

    def open_stream(self, job_id: str, stream: UploadStream) -> None:
        self._streams[job_id] = stream

    def drop_stream(self, job_id: str) -> None:
        stream = self._streams.pop(job_id, None)
        if stream is not None:
            stream.close("the upload's import ended")

    @contextlib.contextmanager
    def claim(self, job_id: str) -> Iterator[None]:
        """One request at a time per upload."""
        if job_id in self._active:
            raise UploadError(
                "another request is still sending this upload; retry when it has ended",
                status=409,
            )
        self._active.add(job_id)
        try:
            yield
        finally:
            self._active.discard(job_id)

    def receiving(self, job_id: str) -> bool:
        """Whether a request is writing this upload right now."""
        return job_id in self._active

    def path(self, job_id: str) -> Path:
        return self.directory / f"{job_id}.part"

    def _meta_path(self, job_id: str) -> Path:
        return self.directory / f"{job_id}.json"

    def received(self, job_id: str) -> int:
        try:
            return self.path(job_id).stat().st_size
        except FileNotFoundError:
            return 0

    def total(self, job_id: str) -> int | None:
        try:
            value = json.loads(self._meta_path(job_id).read_text())["total"]
        except (FileNotFoundError, ValueError, KeyError):
            return None
        return int(value) if value is not None else None

    def _set_total(self, job_id: str, total: int | None) -> None:
        self._meta_path(job_id).write_text(json.dumps({"total": total}))

    def complete(self, job_id: str) -> bool:
        total = self.total(job_id)
        return total is not None and self.received(job_id) == total

    async def receive(
        self, job_id: str, placement: UploadRange, body: AsyncIterator[bytes], limit: int
    ) -> int:
        """Append ``body`` at ``placement.start``; returns the bytes now staged.
        The caller holds :meth:`claim`."""
        have = await asyncio.to_thread(self.received, job_id)
        if placement.start > have:
            raise UploadError(
                f"upload continues at byte {placement.start} but only {have} bytes arrived; "
                "ask HEAD for the offset and continue from there",
                status=416,
            )
        known = await asyncio.to_thread(self.total, job_id)
        total = placement.total if placement.total is not None else known
        if known is not None and placement.total is not None and known != placement.total:
            raise UploadError(
                f"the upload's total changed from {known} to {placement.total} bytes", status=409
            )
        if total is not None and total > limit:
            raise UploadError(
                f"the upload of {total} bytes exceeds the {limit} bytes allowed", status=413
            )
        await asyncio.to_thread(self._open_at, job_id, placement.start, total)
        return await self._append(job_id, placement.start, body, total if total else limit)

    def _open_at(self, job_id: str, start: int, total: int | None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.path(job_id), "ab") as file:
            file.truncate(start)
        self._set_total(job_id, total)

    async def _append(self, job_id: str, start: int, body: AsyncIterator[bytes], limit: int) -> int:
        fd = await asyncio.to_thread(os.open, self.path(job_id), os.O_WRONLY)
        offset = start
        try:
            async for chunk in body:
                if offset + len(chunk) > limit:
                    raise UploadError(
                        f"the upload is larger than the {limit} bytes declared", status=413
                    )
                await asyncio.to_thread(os.pwrite, fd, chunk, offset)
                offset += len(chunk)
        finally:
            await asyncio.to_thread(_sync_close, fd)
        return offset

    def mark_finished_unknown_total(self, job_id: str) -> None:
        """A body without a declared total ended cleanly: what arrived is the image."""
        self._set_total(job_id, self.received(job_id))

    def discard(self, job_id: str) -> None:
        """Remove the staged copy (may run in a thread; live streams close on the loop)."""
        for path in (self.path(job_id), self._meta_path(job_id)):
            path.unlink(missing_ok=True)


def _sync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
