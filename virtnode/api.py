"""The node agent's HTTP API (aiohttp), version ``v1``. docs/virtnode.md is the reference.

Routes::

    GET    /healthz                                   agent alive, accelerator
    GET    /metrics                                   Prometheus text
    GET    /v1/vmis[?namespace=NS]                    list
    POST   /v1/vmis                                   create (body: VirtualMachineInstance)
    GET    /v1/namespaces/{ns}/vmis/{name}            get
    DELETE /v1/namespaces/{ns}/vmis/{name}[?gracePeriodSeconds=N]
    PUT    /v1/namespaces/{ns}/vmis/{name}/{action}   pause, unpause, stop, reset, softreboot,
                                                      addvolume, removevolume, resize, snapshot,
                                                      commit, mirror, migrate, receive
    GET    /v1/namespaces/{ns}/vmis/{name}/console    websocket: serial console (binary frames)
    GET    /v1/events                                 server-sent events (phase + QMP events)

Errors are Kubernetes ``Status`` objects; virtnode errors are mapped to HTTP
codes in :func:`_error_response`, the only place that does so.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from virtnode.agent import NodeAgent
from virtnode.errors import (
    ConsoleError,
    DiskError,
    MigrationError,
    QmpCommandError,
    QmpTimeoutError,
    SpecError,
    VirtnodeError,
    VmNotFoundError,
    VmStateError,
    name_vmi,
)
from virtnode.migration import MIGRATION_ACTIONS, prepare_target
from virtnode.vm import VirtualMachine
from virtnode.volumeops import VOLUME_ACTIONS

log = logging.getLogger(__name__)

AGENT_KEY = web.AppKey("agent", NodeAgent)
#: Largest accepted request body (a VMI with inline cloud-init user data).
MAX_BODY_BYTES = 4 * 1024 * 1024
#: Seconds between SSE keep-alive comments.
SSE_KEEPALIVE = 15.0

Action = Callable[[VirtualMachine, dict[str, Any]], Awaitable[Any]]


async def _pause(vm: VirtualMachine, body: dict[str, Any]) -> None:
    await vm.pause()


async def _unpause(vm: VirtualMachine, body: dict[str, Any]) -> None:
    await vm.unpause()


async def _reset(vm: VirtualMachine, body: dict[str, Any]) -> None:
    await vm.reset()


async def _softreboot(vm: VirtualMachine, body: dict[str, Any]) -> None:
    await vm.soft_reboot()


async def _stop(vm: VirtualMachine, body: dict[str, Any]) -> None:
    grace = body.get("gracePeriodSeconds")
    await vm.stop(None if grace is None else float(grace))


ACTIONS: dict[str, Action] = {
    "pause": _pause,
    "unpause": _unpause,
    "reset": _reset,
    "softreboot": _softreboot,
    "stop": _stop,
    **VOLUME_ACTIONS,
    **MIGRATION_ACTIONS,
}


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    return web.json_response(body, status=code)


def _error_response(exc: VirtnodeError) -> web.Response:
    table: list[tuple[type[VirtnodeError], int, str]] = [
        (VmNotFoundError, 404, "NotFound"),
        (VmStateError, 409, "Conflict"),
        (SpecError, 422, "Invalid"),
        (DiskError, 422, "Invalid"),
        (QmpCommandError, 422, "Invalid"),
        (QmpTimeoutError, 504, "Timeout"),
        (ConsoleError, 503, "ServiceUnavailable"),
        (MigrationError, 500, "InternalError"),
    ]
    for kind, code, reason in table:
        if isinstance(exc, kind):
            return _status(code, reason, str(exc))
    return _status(500, "InternalError", str(exc))


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except VirtnodeError as exc:
        return _error_response(exc)


def _agent(request: web.Request) -> NodeAgent:
    return request.app[AGENT_KEY]


def _vm(request: web.Request) -> VirtualMachine:
    return _agent(request).get(request.match_info["ns"], request.match_info["name"])


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"the request body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError("the request body must be a JSON object")
    return data


async def healthz(request: web.Request) -> web.Response:
    agent = _agent(request)
    ctx = agent.ctx
    body = {
        "status": "ok",
        "accelerator": {"name": ctx.accel.accel, "reason": ctx.accel.reason},
        "driver": ctx.driver.name,
        "qemuUser": {"uid": ctx.run_as.uid if ctx.run_as else None, "note": agent.qemu_user_note},
    }
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=_agent(request).render_metrics(), content_type="text/plain")


async def list_vmis(request: web.Request) -> web.Response:
    namespace = request.query.get("namespace")
    items = [vm.to_object() for vm in _agent(request).list(namespace)]
    return web.json_response(
        {"apiVersion": "v1", "kind": "VirtualMachineInstanceList", "items": items}
    )


async def create_vmi(request: web.Request) -> web.Response:
    vm = await _agent(request).create(await _json_body(request))
    return web.json_response(vm.to_object(), status=201)


async def migration_target(request: web.Request) -> web.Response:
    return web.json_response(await prepare_target(_agent(request), await _json_body(request)))


async def get_vmi(request: web.Request) -> web.Response:
    return web.json_response(_vm(request).to_object())


async def delete_vmi(request: web.Request) -> web.Response:
    vm = _vm(request)
    raw = request.query.get("gracePeriodSeconds")
    try:
        grace = None if raw is None else float(raw)
    except ValueError as exc:
        raise SpecError(f"gracePeriodSeconds {raw!r} is not a number") from exc
    await _agent(request).delete(vm.spec.namespace, vm.spec.name, grace)
    return web.json_response(vm.to_object())


async def vmi_action(request: web.Request) -> web.Response:
    name = request.match_info["action"]
    action = ACTIONS.get(name)
    if action is None:
        raise VmNotFoundError(f"action {name!r} does not exist; use one of {sorted(ACTIONS)}")
    vm = _vm(request)
    body = await _json_body(request)
    try:
        result = await action(vm, body)
    except VirtnodeError as exc:
        name_vmi(exc, vm.key)
        raise
    return web.json_response({"vmi": vm.to_object(), "result": result})


async def console(request: web.Request) -> web.WebSocketResponse:
    vm = _vm(request)
    hub = vm.console
    if hub is None or hub.closed:
        raise VmStateError(f"VM {vm.key} has no console: it is {vm.phase.value}")
    ws = web.WebSocketResponse(max_msg_size=64 * 1024)
    await ws.prepare(request)
    async with asyncio.TaskGroup() as tg:
        out = tg.create_task(_console_out(hub.stream(), ws), name=f"console-out:{vm.key}")
        async for msg in ws:
            if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                try:
                    await hub.write(data)
                except ConsoleError:
                    break
        out.cancel()
    await ws.close()
    return ws


async def _console_out(stream: AsyncIterator[bytes], ws: web.WebSocketResponse) -> None:
    async for chunk in stream:
        await ws.send_bytes(chunk)
    await ws.close()


async def events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    response.headers["Cache-Control"] = "no-cache"
    subscription = _agent(request).events.subscribe()
    try:
        await response.prepare(request)
        # Sent after subscribing: a client that read it will not miss later events.
        await response.write(b": subscribed\n\n")
        while True:
            try:
                async with asyncio.timeout(SSE_KEEPALIVE):
                    event = await subscription.get()
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if event is None:
                break
            await response.write(f"data: {json.dumps(event, default=str)}\n\n".encode())
    except (ConnectionResetError, RuntimeError):
        pass  # the client went away
    finally:
        subscription.close()
    return response


def create_app(agent: NodeAgent, *, owns_agent: bool = True) -> web.Application:
    """The API around ``agent``; with ``owns_agent`` the app starts and closes it."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
    app[AGENT_KEY] = agent

    async def lifetime(_: web.Application) -> AsyncIterator[None]:
        if owns_agent:
            await agent.start()
        yield
        if owns_agent:
            await agent.close()

    app.cleanup_ctx.append(lifetime)
    base = "/v1/namespaces/{ns}/vmis/{name}"
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/vmis", list_vmis)
    app.router.add_post("/v1/vmis", create_vmi)
    app.router.add_get(base, get_vmi)
    app.router.add_delete(base, delete_vmi)
    app.router.add_get(base + "/console", console)
    app.router.add_put(base + "/{action}", vmi_action)
    app.router.add_get("/v1/events", events)
    app.router.add_post("/v1/migrations/targets", migration_target)
    return app
