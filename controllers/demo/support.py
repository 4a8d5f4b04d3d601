"""Pieces of ``diskplane demo``: output, the ``diskplane up`` child, the HTTP server,
store waits and small helpers. Timeouts are the named settings below."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from controllers.api.kinds import ResourceKind
from controllers.errors import ControllersError, NotFound
from controllers.store.embedded import EmbeddedStore
from controllers.store.protocol import EventType, Object

NAMESPACE = "default"
DV_NAME = "demo-disk"
VM_NAME = "demo"
DISK_FILE = "tiny-guest.qcow2"
REPOSITORY = "diskplane/demo:latest"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# Named timeouts (seconds).
UP_START_TIMEOUT_S = 60.0
UP_STOP_TIMEOUT_S = 30.0
IMPORT_TIMEOUT_S = 300.0
BOOT_TIMEOUT_S = 240.0
HALT_TIMEOUT_S = 120.0
DELETE_TIMEOUT_S = 90.0
REGISTRY_START_TIMEOUT_S = 20.0
REGISTRY_STOP_TIMEOUT_S = 10.0
# How often the serial log and the registry's /v2/ are looked at (no event exists for either).
POLL_INTERVAL_S = 0.2
# Non-interactive output prints a progress line at most this often.
PROGRESS_PRINT_INTERVAL_S = 0.5


class DemoError(ControllersError):
    """A demo step failed; the message names the step and the cause."""


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


class Printer:
    """Step lines with the time since the demo started and what each step took."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.tty = sys.stdout.isatty()
        self._open_line = False

    def step(self, text: str, took: float | None = None) -> None:
        self.end_line()
        clock = time.monotonic() - self.start
        suffix = f"  ({took:.1f} s)" if took is not None else ""
        print(f"[{clock:6.1f}s] {text}{suffix}", flush=True)

    def detail(self, text: str) -> None:
        self.end_line()
        print(f"          {text}", flush=True)

    def live(self, text: str) -> None:
        """A line that rewrites itself on a terminal (printed as is otherwise)."""
        if self.tty:
            print(f"\r          {text}\x1b[K", end="", flush=True)
            self._open_line = True
        else:
            print(f"          {text}", flush=True)

    def end_line(self) -> None:
        if self._open_line:
            print(flush=True)
            self._open_line = False


# -- the stack -----------------------------------------------------------------


class Stack:
    """``diskplane up`` as a child process, its output kept in a log file."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.data_dir, self.log = data_dir, log
        self.process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        #: What ``up`` printed until its controllers ran (its service URLs, once it has them).
        self.startup: list[str] = []

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "controllers.cli", "--data-dir", str(self.data_dir), "up"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # the demo stops it itself, after cleaning up
        )
        ready = asyncio.get_running_loop().create_future()
        self._drain = asyncio.create_task(self._copy_output(ready), name="demo-up-output")
        try:
            await asyncio.wait_for(asyncio.shield(ready), UP_START_TIMEOUT_S)
        except TimeoutError:
            raise DemoError(
                f"diskplane up did not start its controllers within {UP_START_TIMEOUT_S:g} s"
                f" (another `diskplane up` on {self.data_dir}? see {self.log})"
            ) from None
        if not ready.result():
            raise DemoError(f"diskplane up exited at start: {self.tail()}")

    async def _copy_output(self, ready: asyncio.Future[bool]) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        with self.log.open("ab") as out:
            async for line in self.process.stdout:
                out.write(line)
                out.flush()
                if not ready.done():
                    self.startup.append(line.decode(errors="replace").rstrip())
                if b"controllers running" in line and not ready.done():
                    ready.set_result(True)
        if not ready.done():
            ready.set_result(False)

    def tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no output)"

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), UP_STOP_TIMEOUT_S)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain, UP_STOP_TIMEOUT_S)


# -- the HTTP server -----------------------------------------------------------


@dataclass
class Served:
    url: str
    runner: web.AppRunner
    bytes_sent: int = 0
    first_request: float | None = None


async def serve_directory(directory: Path, name: str) -> Served:
    """Static files on 127.0.0.1 (aiohttp's FileResponse: HEAD, Range, ETag)."""
    app = web.Application()
    app.router.add_static("/", directory)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    served = Served("", runner)

    async def count(request: web.Request, response: web.StreamResponse) -> None:
        if request.method == "GET" and response.content_length:
            served.bytes_sent += response.content_length
            if served.first_request is None:
                served.first_request = time.monotonic()

    app.on_response_prepare.append(count)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    served.url = f"http://127.0.0.1:{port}/{name}"
    return served


# -- store helpers -------------------------------------------------------------


async def follow(
    store: EmbeddedStore,
    kind: ResourceKind,
    name: str,
    done: Callable[[Object], bool],
    seen: Callable[[Object], None],
    limit: float,
    what: str,
) -> Object:
    """Call ``seen`` on every version of the object until ``done`` says so."""

    async def run() -> Object:
        listing = await store.list(kind, NAMESPACE)
        for obj in listing.items:
            if obj["metadata"]["name"] == name:
                seen(obj)
                if done(obj):
                    return obj
        async for event in store.watch(kind, NAMESPACE, listing.resource_version):
            if event.object["metadata"]["name"] != name or event.type == EventType.DELETED:
                continue
            seen(event.object)
            if done(event.object):
                return event.object
        raise DemoError(f"the watch on {kind.singular} {name} ended before {what}")

    try:
        return await asyncio.wait_for(run(), limit)
    except TimeoutError:
        raise DemoError(f"{kind.singular} {name} did not reach {what} in {limit:g} s") from None


async def delete_and_wait(store: EmbeddedStore, kind: ResourceKind, name: str) -> bool:
    """Delete an object and wait until its finalizers let it go; False when absent."""
    try:
        pending = await store.delete(kind, NAMESPACE, name)
    except NotFound:
        return False
    if pending is None:
        return True
    rv = pending["metadata"]["resourceVersion"]

    async def gone() -> None:
        async for event in store.watch(kind, NAMESPACE, rv):
            if event.type == EventType.DELETED and event.object["metadata"]["name"] == name:
                return

    try:
        await asyncio.wait_for(gone(), DELETE_TIMEOUT_S)
    except TimeoutError:
        raise DemoError(
            f"{kind.singular} {name} was not deleted within {DELETE_TIMEOUT_S:g} s"
        ) from None
    return True


def status_of(obj: Object) -> dict[str, Any]:
    status = obj.get("status")
    return status if isinstance(status, dict) else {}


def conditions(obj: Object) -> str:
    found = [
        f"{c.get('type')}={c.get('status')} {c.get('reason', '')} {c.get('message', '')}".strip()
        for c in status_of(obj).get("conditions") or []
        if isinstance(c, dict)
    ]
    return "; ".join(found) or "no conditions"


def disk_facts(disk: object) -> str:
    if not isinstance(disk, dict):
        return "no disk facts"
    virtual = disk.get("virtualSize") or 0
    return (
        f"disk {disk.get('format')}, {mib(int(disk.get('size') or 0))} stored,"
        f" {mib(int(virtual))} virtual"
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read(64 * 1024)
    except FileNotFoundError:
        return b""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_http_ok(url: str, process: asyncio.subprocess.Process) -> None:
    async def poll() -> None:
        async with aiohttp.ClientSession() as session:
            while process.returncode is None:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(POLL_INTERVAL_S)  # nothing to await before it listens
        raise DemoError(f"docker-registry exited with code {process.returncode} at start")

    try:
        await asyncio.wait_for(poll(), REGISTRY_START_TIMEOUT_S)
    except TimeoutError:
        raise DemoError(
            f"docker-registry did not answer {url} within {REGISTRY_START_TIMEOUT_S:g} s"
        ) from None
