"""Upload endpoints (CDI's upload proxy, resumable): ``/v1/uploads/{namespace}/{name}``.

``PUT`` streams a raw body, ``POST`` a multipart form (first ``file`` part);
the ``/async`` variants answer once the bytes are received, the plain ones
once the import finished. Raw, iso and compressed uploads stream straight
into their running import (:mod:`cdi.service.upload_feed`); other formats
are staged first (:mod:`cdi.service.uploads`). ``Content-Range: bytes A-B/TOTAL`` continues an
interrupted upload at ``A``; ``HEAD``/``GET`` report the bytes received
(``Upload-Offset`` header and an ``UploadStatus`` body). Every call needs
``Authorization: Bearer <upload token>`` for exactly that volume.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import BodyPartReader, StreamReader, web

from cdi.service.errors import JobConflict, JobFailed, UploadError, UploadImportEnded
from cdi.service.model import ImportJob, Phase, VolumeRef
from cdi.service.openapi import RouteDoc
from cdi.service.state import SERVICE, ImporterService
from cdi.service.upload_feed import continue_stream, start_stream
from cdi.service.uploads import WRITE_CHUNK, UploadRange, parse_content_range

log = logging.getLogger(__name__)


def _target(request: web.Request, service: ImporterService) -> tuple[VolumeRef, ImportJob]:
    volume = VolumeRef.parse(
        f"{request.match_info['namespace']}/{request.match_info['name']}", "path"
    )
    service.tokens.verify(request.headers.get("Authorization"), volume)
    job = service.scheduler.active_for_volume(volume.namespace, volume.name)
    if job is None or job.spec.source_kind != "upload":
        raise web.HTTPNotFound(
            text=f'{{"error": "no upload import is waiting for volume {volume}; '
            'create one with POST /v1/imports", "field": null}',
            content_type="application/json",
        )
    return volume, job


def _status(service: ImporterService, job: ImportJob) -> dict[str, object]:
    stream = service.staging.stream(job.id)
    if stream is not None:
        return {
            "jobId": job.id,
            "bytesReceived": stream.received,
            "totalBytes": stream.total,
            "complete": stream.ended,
            "receiving": service.staging.receiving(job.id),
            "phase": job.phase.value,
        }
    received = service.staging.received(job.id)
    total = service.staging.total(job.id)
    return {
        "jobId": job.id,
        "bytesReceived": received,
        "totalBytes": total,
        "complete": job.phase is not Phase.UPLOAD_PENDING,
        "receiving": service.staging.receiving(job.id),
        "phase": job.phase.value,
    }


async def upload_status(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    _, job = _target(request, service)
    status = _status(service, job)
    return web.json_response(status, headers={"Upload-Offset": str(status["bytesReceived"])})


async def _coalesce(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Bigger writes: gather the socket's small chunks into ~1 MiB pieces."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        if len(buffer) >= WRITE_CHUNK:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


async def _stream_chunks(reader: StreamReader, idle_timeout: float) -> AsyncIterator[bytes]:
    """The body's chunks; a body that goes quiet for ``idle_timeout`` s is dropped."""
    while True:
        async with asyncio.timeout(idle_timeout):
            chunk = await reader.readany()
        if not chunk:
            return
        yield chunk


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(WRITE_CHUNK):
        yield chunk


async def _receive(
    service: ImporterService,
    job: ImportJob,
    placement: UploadRange,
    body: AsyncIterator[bytes],
    ranged: bool,
) -> None:
    with service.staging.claim(job.id):
        stream = service.staging.stream(job.id)
        if stream is not None:
            return await continue_stream(service, job, stream, placement, _coalesce(body), ranged)
        if job.phase is not Phase.UPLOAD_PENDING:
            raise JobConflict(f"the upload for volume {job.spec.target} is already complete")
        limit = job.spec.size_bytes
        if placement.total is not None and placement.total > limit:
            raise UploadError(
                f"the upload of {placement.total} bytes exceeds the {limit} bytes allowed",
                status=413,
            )
        if placement.start == 0 and service.staging.received(job.id) == 0:
            pieces = _coalesce(body)
            try:
                first = await anext(pieces, b"")
            except Exception as exc:
                raise UploadError("the upload body ended early; send it again") from exc
            if await start_stream(service, job, placement, first, pieces, ranged):
                return None
            body = _prepend(first, pieces)
        await _stage(service, job, placement, body, ranged)


async def _receive_or_ended(
    service: ImporterService,
    job: ImportJob,
    placement: UploadRange,
    body: AsyncIterator[bytes],
    ranged: bool,
    sync: bool,
) -> None:
    """A sync upload whose streaming import failed early answers with that failure."""
    try:
        await _receive(service, job, placement, body, ranged)
    except UploadImportEnded:
        if not sync:
            raise


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for piece in rest:
        yield piece


async def _stage(
    service: ImporterService,
    job: ImportJob,
    placement: UploadRange,
    body: AsyncIterator[bytes],
    ranged: bool,
) -> None:
    # The staged copy is the volume's scratch space: it counts against the
    # volume's capacity (like the pipeline's scratch copies), never beyond it.
    limit = job.spec.size_bytes
    before = placement.start
    try:
        received = await service.staging.receive(job.id, placement, _coalesce(body), limit)
    except UploadError:
        raise
    except Exception as exc:  # the body broke off: what was written is kept for resume
        service.metrics.upload_bytes += max(service.staging.received(job.id) - before, 0)
        log.info(
            "upload for volume %s interrupted after %d bytes",
            job.spec.target,
            service.staging.received(job.id),
        )
        raise UploadError("the upload body ended early; continue with Content-Range") from exc
    service.metrics.upload_bytes += received - before
    if not ranged and placement.total is None:
        service.staging.mark_finished_unknown_total(job.id)
    if service.staging.complete(job.id):
        log.info(
            "upload for volume %s complete (%d bytes); import queued", job.spec.target, received
        )
        await service.scheduler.release_upload(job)


async def _answer(service: ImporterService, job: ImportJob, sync: bool) -> web.Response:
    stream = service.staging.stream(job.id)
    all_sent = stream is None or stream.ended or stream.closed
    if sync and job.phase is not Phase.UPLOAD_PENDING and all_sent:
        async with asyncio.timeout(service.settings.upload_sync_timeout_seconds):
            job = await service.scheduler.wait(job.id)
        if job.phase is not Phase.SUCCEEDED:
            raise JobFailed(job.reason or "Failed", job.message or "the import failed", final=True)
        return web.json_response(job.to_json())
    status = _status(service, job)
    return web.json_response(status, headers={"Upload-Offset": str(status["bytesReceived"])})


def _put(sync: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def put(request: web.Request) -> web.Response:
        service = request.app[SERVICE]
        _, job = _target(request, service)
        header = request.headers.get("Content-Range")
        placement = parse_content_range(header, request.content_length)
        body = _stream_chunks(request.content, service.settings.upload_read_timeout_seconds)
        await _receive_or_ended(service, job, placement, body, header is not None, sync)
        return await _answer(service, job, sync)

    return put


def _post_form(sync: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def post(request: web.Request) -> web.Response:
        service = request.app[SERVICE]
        _, job = _target(request, service)
        header = request.headers.get("Content-Range")
        placement = parse_content_range(header, None)
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                raise UploadError("the form has no 'file' part")
            if isinstance(part, BodyPartReader) and part.name == "file":
                break
        await _receive_or_ended(
            service, job, placement, _part_chunks(part), header is not None, sync
        )
        return await _answer(service, job, sync)

    return post


_BASE = "/v1/uploads/{namespace}/{name}"
_UPLOAD_ERRORS = {
    400: "Error",
    401: "Error",
    403: "Error",
    404: "Error",
    409: "Error",
    413: "Error",
    416: "Error",
}
_RAW = "application/octet-stream"
_FORM = "multipart/form-data"

UPLOAD_ROUTES: list[tuple[RouteDoc, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
    (
        RouteDoc(
            "GET",
            _BASE,
            "getUploadStatus",
            "Bytes received so far (resume point)",
            responses={200: "UploadStatus", 401: "Error", 403: "Error", 404: "Error"},
            auth="uploadToken",
        ),
        upload_status,
    ),
    (
        RouteDoc(
            "HEAD",
            _BASE,
            "headUploadStatus",
            "Bytes received, in the Upload-Offset header",
            responses={200: None, 401: None, 403: None, 404: None},
            auth="uploadToken",
        ),
        upload_status,
    ),
    (
        RouteDoc(
            "PUT",
            _BASE,
            "uploadSync",
            "Raw body; answers when the import finished",
            request_content=_RAW,
            responses={200: "ImportJob", 422: "Error", **_UPLOAD_ERRORS},
            auth="uploadToken",
        ),
        _put(sync=True),
    ),
    (
        RouteDoc(
            "PUT",
            _BASE + "/async",
            "uploadAsync",
            "Raw body; answers when bytes are staged",
            request_content=_RAW,
            responses={200: "UploadStatus", **_UPLOAD_ERRORS},
            auth="uploadToken",
        ),
        _put(sync=False),
    ),
    (
        RouteDoc(
            "POST",
            _BASE,
            "uploadFormSync",
            "Multipart form (part 'file'); sync",
            request_content=_FORM,
            responses={200: "ImportJob", 422: "Error", **_UPLOAD_ERRORS},
            auth="uploadToken",
        ),
        _post_form(sync=True),
    ),
    (
        RouteDoc(
            "POST",
            _BASE + "/async",
            "uploadFormAsync",
            "Multipart form (part 'file'); async",
            request_content=_FORM,
            responses={200: "UploadStatus", **_UPLOAD_ERRORS},
            auth="uploadToken",
        ),
        _post_form(sync=False),
    ),
]
