"""Streamed uploads: request bodies go straight into the running import, no staged copy.

The first request of an upload decides: when its first piece (up to 1 MiB)
is raw, iso or compressed (:func:`cdi.sources.upload.streamable`) the job is
released at once and the body feeds an :class:`UploadStream` that the
pipeline reads; otherwise the bytes are staged (:mod:`cdi.service.uploads`).
A continuation (``Content-Range: bytes N-…``) feeds the same stream: ``N``
may be at most the bytes received; bytes before that are skipped (already
decoded). The stream and the decoder live in memory only.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from cdi.service.errors import JobConflict, UploadError, UploadImportEnded
from cdi.service.model import ImportJob
from cdi.service.state import ImporterService
from cdi.service.uploads import UploadRange
from cdi.sources.upload import UploadStream, streamable

log = logging.getLogger(__name__)


async def start_stream(
    service: ImporterService,
    job: ImportJob,
    placement: UploadRange,
    first: bytes,
    rest: AsyncIterator[bytes],
    ranged: bool,
) -> bool:
    """Stream this upload when ``first`` allows it; False: stage it instead."""
    if not first or not streamable(first):
        return False
    settings = service.settings
    stream = UploadStream(
        first,
        placement.total,
        max_pieces=settings.upload_stream_pieces,
        resume_timeout=settings.upload_resume_timeout_seconds,
    )
    service.staging.open_stream(job.id, stream)
    service.metrics.upload_bytes += len(first)
    log.info("upload for volume %s streams into its import", job.spec.target)
    await service.scheduler.release_upload(job)
    await feed(service, job, stream, rest, skip=0, ranged=ranged)
    return True


async def continue_stream(
    service: ImporterService,
    job: ImportJob,
    stream: UploadStream,
    placement: UploadRange,
    body: AsyncIterator[bytes],
    ranged: bool,
) -> None:
    if stream.ended:
        raise JobConflict(f"the upload for volume {job.spec.target} is already complete")
    if placement.start > stream.received:
        raise UploadError(
            f"upload continues at byte {placement.start} but only {stream.received} bytes "
            "arrived; ask HEAD for the offset and continue from there",
            status=416,
        )
    if placement.total is not None and stream.total not in (None, placement.total):
        raise UploadError(
            f"the upload's total changed from {stream.total} to {placement.total} bytes",
            status=409,
        )
    stream.total = placement.total if placement.total is not None else stream.total
    await feed(service, job, stream, body, skip=stream.received - placement.start, ranged=ranged)


async def feed(
    service: ImporterService,
    job: ImportJob,
    stream: UploadStream,
    body: AsyncIterator[bytes],
    *,
    skip: int,
    ranged: bool,
) -> None:
    """Put ``body`` (minus its first ``skip`` bytes) into the stream; ends it when complete."""
    limit = job.spec.size_bytes
    try:
        async for chunk in body:
            piece, skip = chunk[skip:], max(skip - len(chunk), 0)
            if not piece:
                continue
            await _put(job, stream, piece, limit)
            service.metrics.upload_bytes += len(piece)
    except (UploadError, JobConflict):
        raise
    except Exception as exc:  # the body broke off: what arrived is in the import already
        log.info(
            "upload for volume %s interrupted after %d bytes", job.spec.target, stream.received
        )
        raise UploadError("the upload body ended early; continue with Content-Range") from exc
    if stream.total is None and not ranged:
        stream.total = stream.received
    if stream.total is not None and stream.received >= stream.total:
        log.info("upload for volume %s complete (%d bytes)", job.spec.target, stream.received)
        stream.end()


async def _put(job: ImportJob, stream: UploadStream, piece: bytes, limit: int) -> None:
    allowed = stream.total or limit
    if stream.received + len(piece) > allowed:
        stream.close("the upload was larger than declared")
        raise UploadError(f"the upload is larger than the {allowed} bytes declared", status=413)
    if not await stream.put(piece):
        raise UploadImportEnded(f"the import of the upload for volume {job.spec.target} ended")
