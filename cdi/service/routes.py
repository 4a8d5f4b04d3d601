"""HTTP handlers of the jobs API and the route table that both aiohttp and OpenAPI read."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from cdi.service.errors import RequestInvalid
from cdi.service.model import ImportSpec, Phase
from cdi.service.openapi import RouteDoc, build_document
from cdi.service.schema import UPLOAD_TOKEN_REQUEST_SCHEMA, JsonObject, validate
from cdi.service.state import SERVICE, ImporterService
from cdi.service.upload_routes import UPLOAD_ROUTES

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    doc: RouteDoc
    handler: Handler


def _service(request: web.Request) -> ImporterService:
    return request.app[SERVICE]


async def _json_body(request: web.Request) -> object:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestInvalid("body", "is not valid JSON", status=400) from exc


async def create_import(request: web.Request) -> web.Response:
    service = _service(request)
    body = await _json_body(request)
    spec = ImportSpec.from_request(body)
    owner = body.get("ownerUID") if isinstance(body, dict) else None
    job = await service.scheduler.submit(spec, owner)
    return web.json_response(service.scheduler.get(job.id).to_json(), status=201)


async def get_import(request: web.Request) -> web.Response:
    job = _service(request).scheduler.get(request.match_info["id"])
    return web.json_response(job.to_json())


async def list_imports(request: web.Request) -> web.Response:
    jobs = _service(request).scheduler.list()
    return web.json_response({"items": [job.to_json() for job in jobs]})


async def cancel_import(request: web.Request) -> web.Response:
    job = await _service(request).scheduler.cancel(request.match_info["id"])
    return web.json_response(job.to_json())


async def import_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one ``progress`` event per change, ``done`` at the end."""
    service = _service(request)
    job_id = request.match_info["id"]
    service.scheduler.get(job_id)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    with service.events.subscribe(job_id) as queue:
        snapshot = service.scheduler.get(job_id).to_json()
        while True:
            done = Phase(snapshot["phase"]).terminal
            event = "done" if done else "progress"
            await response.write(f"event: {event}\ndata: {json.dumps(snapshot)}\n\n".encode())
            if done:
                break
            snapshot = await _next_snapshot(queue, response, service)
    await response.write_eof()
    return response


async def _next_snapshot(
    queue: asyncio.Queue[JsonObject], response: web.StreamResponse, service: ImporterService
) -> JsonObject:
    while True:
        try:
            # not wait_for: on 3.11 it can swallow a cancellation as the queue yields
            async with asyncio.timeout(service.settings.events_heartbeat_seconds):
                return await queue.get()
        except TimeoutError:
            await response.write(b": keep-alive\n\n")


async def create_upload_token(request: web.Request) -> web.Response:
    service = _service(request)
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise RequestInvalid("body", "must be a JSON object", status=400)
    validate(body, UPLOAD_TOKEN_REQUEST_SCHEMA)
    return web.json_response(service.issue_upload_token(body), status=201)


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(build_document([route.doc for route in ROUTES]))


async def metrics(request: web.Request) -> web.Response:
    service = _service(request)
    text = service.metrics.render(
        service.scheduler.phase_counts(),
        service.scheduler.queue_length,
        service.scheduler.running_count,
    )
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready = _service(request).scheduler.ready
    return web.json_response({"ready": ready}, status=200 if ready else 503)


_JOB = {200: "ImportJob", 401: "Error", 404: "Error"}

ROUTES: list[Route] = [
    Route(
        RouteDoc(
            "POST",
            "/v1/imports",
            "createImport",
            "Start an import job",
            request="ImportRequest",
            responses={201: "ImportJob", 400: "Error", 401: "Error", 409: "Error", 422: "Error"},
        ),
        create_import,
    ),
    Route(
        RouteDoc(
            "GET",
            "/v1/imports",
            "listImports",
            "List import jobs",
            responses={200: "ImportJobList", 401: "Error"},
        ),
        list_imports,
    ),
    Route(
        RouteDoc("GET", "/v1/imports/{id}", "getImport", "One import job", responses=_JOB),
        get_import,
    ),
    Route(
        RouteDoc(
            "DELETE",
            "/v1/imports/{id}",
            "cancelImport",
            "Cancel: stop the transfer, remove partial data, free the capacity",
            responses=_JOB,
        ),
        cancel_import,
    ),
    Route(
        RouteDoc(
            "GET",
            "/v1/imports/{id}/events",
            "streamImportEvents",
            "Server-sent events: 'progress' with an ImportJob, then 'done'",
            responses={200: "ImportJob", 401: "Error", 404: "Error"},
            response_content="text/event-stream",
        ),
        import_events,
    ),
    Route(
        RouteDoc(
            "POST",
            "/v1/upload-tokens",
            "createUploadToken",
            "An upload token for one target volume",
            request="UploadTokenRequest",
            responses={201: "UploadToken", 400: "Error", 401: "Error", 422: "Error"},
        ),
        create_upload_token,
    ),
    *(Route(doc, handler) for doc, handler in UPLOAD_ROUTES),
    Route(
        RouteDoc(
            "GET", "/v1/openapi.json", "openapi", "This document", responses={200: None}, auth=None
        ),
        openapi_document,
    ),
    Route(
        RouteDoc(
            "GET",
            "/metrics",
            "metrics",
            "Prometheus metrics",
            responses={200: None},
            response_content="text/plain",
        ),
        metrics,
    ),
    Route(
        RouteDoc("GET", "/healthz", "healthz", "Liveness", responses={200: None}, auth=None),
        healthz,
    ),
    Route(
        RouteDoc(
            "GET",
            "/readyz",
            "readyz",
            "Readiness: jobs loaded and dispatching",
            responses={200: None, 503: None},
            auth=None,
        ),
        readyz,
    ),
]


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        app.router.add_route(route.doc.method, route.doc.path, route.handler)
