"""The aiohttp application: middlewares (errors, auth), resources, and ``serve``.

This module is the one place where our exceptions become HTTP answers.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from cdi.service.errors import (
    AuthError,
    AuthForbidden,
    CloneError,
    JobConflict,
    JobFailed,
    JobNotFound,
    RequestInvalid,
    ServiceError,
    UploadError,
)
from cdi.service.events import EventHub
from cdi.service.metrics import ServiceMetrics
from cdi.service.ports import ImportRunner
from cdi.service.routes import add_routes
from cdi.service.scheduler import JobScheduler
from cdi.service.settings import ServiceSettings
from cdi.service.state import SERVICE, ImporterService
from cdi.service.store import JobStore
from cdi.service.tokens import UploadTokens, load_or_create_key
from cdi.service.uploads import UploadStaging

log = logging.getLogger(__name__)

_OPEN_PATHS = ("/healthz", "/readyz", "/v1/openapi.json")
_UPLOAD_PREFIX = "/v1/uploads/"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": message, "field": field}, status=status, headers=headers)


def _status_of(exc: ServiceError) -> int:
    if isinstance(exc, RequestInvalid):
        return exc.status
    if isinstance(exc, UploadError):
        return exc.status
    table: list[tuple[type[ServiceError], int]] = [
        (JobNotFound, 404),
        (AuthForbidden, 403),
        (AuthError, 401),
        (JobConflict, 409),
        (CloneError, 409),
        (JobFailed, 422),
    ]
    return next((status for kind, status in table if isinstance(exc, kind)), 500)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServiceError as exc:
        field = exc.field if isinstance(exc, RequestInvalid) else None
        return _error(_status_of(exc), str(exc), field)


def auth_middleware(token: str | None) -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if token is None or path in _OPEN_PATHS or path.startswith(_UPLOAD_PREFIX):
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
            return _error(401, "this API needs a valid bearer token")
        return await handler(request)

    return check


def create_app(settings: ServiceSettings, runner: ImportRunner | None = None) -> web.Application:
    """The service as an aiohttp app; resources start and stop with the app."""
    settings.validate()
    app = web.Application(
        middlewares=[error_middleware, auth_middleware(settings.api_token)],
        client_max_size=1024**2,
    )
    add_routes(app)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        service = await _start(settings, runner)
        app[SERVICE] = service
        try:
            yield
        finally:
            await service.scheduler.stop()
            await service.store.close()

    app.cleanup_ctx.append(resources)
    return app


async def _start(settings: ServiceSettings, runner: ImportRunner | None) -> ImporterService:
    state = settings.state_dir
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    key = await asyncio.to_thread(load_or_create_key, state / "upload-token.key")
    staging = UploadStaging(state / "uploads")
    if runner is None:
        from cdi.service.pipeline import PipelineRunner  # the real pipeline, at run time

        runner = PipelineRunner(settings, staging)
    store = JobStore(state / "jobs.sqlite3")
    await store.open()
    metrics, events = ServiceMetrics(), EventHub()
    scheduler = JobScheduler(settings, store, runner, metrics, events)
    await scheduler.start()
    return ImporterService(settings, store, scheduler, UploadTokens(key), staging, metrics, events)


def _ssl_context(settings: ServiceSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


async def serve(settings: ServiceSettings, ready: Callable[[int], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM; ``ready(port)`` is called once the socket listens."""
    app = create_app(settings)
    runner = web.AppRunner(
        app, handler_cancellation=True, shutdown_timeout=settings.shutdown_timeout_seconds
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=_ssl_context(settings))
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        port = runner.addresses[0][1]
        log.info("importer service listening on %s:%d (tls=%s)", settings.host, port, settings.tls)
        if ready is not None:
            ready(port)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
