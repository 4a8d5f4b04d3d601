"""A real HTTP(S) file server with programmable faults, for import tests.

Fixtures (see docs/testing.md):

- ``http_server``: a ``FileServer`` on ``http://127.0.0.1:PORT``;
- ``https_server``: a ``TlsFileServer`` (same API plus ``ca_file``) over TLS.

Both are function-scoped views on a session server that runs in its own
thread and event loop; each test starts with an empty root, no faults, no
auth and an empty access log.

Request order: redirect hops (``/__redirect__/N/<name>``) answer 302 first;
then the failure fault (``fail_status``), then auth, then the method check
(``no_head``), then the file with ``Range``/``If-Range``, stall and drop.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import shutil
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from aiohttp import web

from tests.support.certs import CertAuthority
from tests.support.loopthread import LoopThread

CHUNK_SIZE = 256 * 1024
REDIRECT_PREFIX = "/__redirect__/"
REALM = "diskplane-test"


def basic_authorization(user: str, password: str) -> str:
    """The ``Authorization`` header value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass(frozen=True)
class Faults:
    """What goes wrong when one file is requested. Counters count responses."""

    drop_after: int | None = None  # close the connection after N body bytes
    drop_times: int = 1  # how many GET responses get dropped, then normal
    fail_status: int | None = None  # answer this status instead of the file...
    fail_times: int = 1  # ...this many times (HEAD and GET both count)
    retry_after: int | None = None  # Retry-After seconds on the failures
    stall_seconds: float = 0.0  # pause between the headers and the body
    stall_times: int | None = None  # how many GETs stall; None: every GET
    no_range: bool = False  # ignore Range/If-Range, no Accept-Ranges
    no_head: bool = False  # HEAD answers 405
    no_content_length: bool = False  # chunked transfer, no Content-Length
    rate: int | None = None  # GET bodies at about this many bytes per second (a slow link)


@dataclass
class AccessRecord:
    """One request as the server saw it; updated while the response streams.

    ``range`` is the client's requested ``(first, last)`` byte positions
    (``last`` inclusive, ``None`` when open-ended; a suffix range is stored
    resolved). ``bytes_sent`` counts body bytes; ``completed`` is True once the
    whole body went out (HEAD and bodyless answers count as complete).
    """

    method: str
    path: str
    headers: dict[str, str]
    range: tuple[int, int | None] | None = None
    status: int = 0
    bytes_sent: int = 0
    completed: bool = False


@dataclass
class _Counters:
    faults: Faults
    drops_left: int = 0
    fails_left: int = 0
    stalls_left: int | None = None


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: dict[str, _Counters] = field(default_factory=dict)
    authorization: str | None = None
    challenge: str | None = None
    required_headers: dict[str, str] = field(default_factory=dict)
    log: list[AccessRecord] = field(default_factory=list)


class FileServer:
    """Serves ``root`` over HTTP; the test-facing handle of the session server."""

    def __init__(self, root: Path, base_url: str) -> None:
        self.root = root
        self.base_url = base_url
        self._state = _State()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return self.base_url.split("://", 1)[1]

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name.lstrip('/')}"

    def redirect_url(self, name: str, hops: int = 1) -> str:
        """A URL answering 302 ``hops`` times before reaching ``url(name)``."""
        return f"{self.base_url}{REDIRECT_PREFIX}{hops}/{name.lstrip('/')}"

    # Faults -----------------------------------------------------------------
    def set_faults(self, name: str, faults: Faults) -> None:
        counters = _Counters(
            faults=faults,
            drops_left=faults.drop_times if faults.drop_after is not None else 0,
            fails_left=faults.fail_times if faults.fail_status is not None else 0,
            stalls_left=faults.stall_times,
        )
        with self._state.lock:
            self._state.faults[name.lstrip("/")] = counters

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.faults.clear()

    # Auth -------------------------------------------------------------------
    def require_basic(self, user: str, password: str) -> None:
        with self._state.lock:
            self._state.authorization = basic_authorization(user, password)
            self._state.challenge = f'Basic realm="{REALM}"'

    def require_bearer(self, token: str) -> None:
        with self._state.lock:
            self._state.authorization = f"Bearer {token}"
            self._state.challenge = f'Bearer realm="{REALM}"'

    def require_header(self, name: str, value: str) -> None:
        """Answer 403 unless the request carries ``name: value``."""
        with self._state.lock:
            self._state.required_headers[name] = value

    def clear_auth(self) -> None:
        with self._state.lock:
            self._state.authorization = None
            self._state.challenge = None
            self._state.required_headers.clear()

    # Access log ---------------------------------------------------------------
    @property
    def log(self) -> list[AccessRecord]:
        """A snapshot of the access log, oldest first."""
        with self._state.lock:
            return [replace(r) for r in self._state.log]

    def clear_log(self) -> None:
        with self._state.lock:
            self._state.log.clear()

    def reset(self) -> None:
        """Empty root, no faults, no auth, empty log (done before each test)."""
        self.clear_faults()
        self.clear_auth()
        self.clear_log()
        for child in self.root.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    # Server side (runs on the server thread) ----------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        record = AccessRecord(request.method, request.path, dict(request.headers))
        with self._state.lock:
            self._state.log.append(record)
        if request.path.startswith(REDIRECT_PREFIX):
            return _finish(record, self._redirect(request.path))
        name = request.path.lstrip("/")
        early = self._failure(name) or self._auth_failure(request)
        if early is not None:
            return _finish(record, early)
        faults = self._faults_for(name)
        if request.method == "HEAD" and faults.no_head:
            return _finish(record, web.Response(status=405, headers={"Allow": "GET"}))
        if request.method not in ("GET", "HEAD"):
            return _finish(record, web.Response(status=405, headers={"Allow": "GET, HEAD"}))
        path = self._resolve(name)
        if path is None:
            return _finish(record, web.Response(status=404))
        return await _serve_file(request, record, path, faults, self)

    def _redirect(self, path: str) -> web.StreamResponse:
        hops_text, _, name = path[len(REDIRECT_PREFIX) :].partition("/")
        hops = int(hops_text) if hops_text.isdigit() else 0
        target = f"{REDIRECT_PREFIX}{hops - 1}/{name}" if hops > 1 else f"/{name}"
        return web.Response(status=302, headers={"Location": target})

    def _failure(self, name: str) -> web.StreamResponse | None:
        with self._state.lock:
            counters = self._state.faults.get(name)
            if counters is None or counters.fails_left <= 0:
                return None
            counters.fails_left -= 1
            faults = counters.faults
        headers = {}
        if faults.retry_after is not None:
            headers["Retry-After"] = str(faults.retry_after)
        assert faults.fail_status is not None
        return web.Response(status=faults.fail_status, headers=headers)

    def _auth_failure(self, request: web.Request) -> web.StreamResponse | None:
        with self._state.lock:
            expected, challenge = self._state.authorization, self._state.challenge
            required = dict(self._state.required_headers)
        if expected is not None and request.headers.get("Authorization") != expected:
            assert challenge is not None
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        for header, value in required.items():
            if request.headers.get(header) != value:
                return web.Response(status=403)
        return None

    def _faults_for(self, name: str) -> Faults:
        with self._state.lock:
            counters = self._state.faults.get(name)
            return counters.faults if counters is not None else Faults()

    def faults_for(self, name: str) -> Faults | None:
        with self._state.lock:
            counters = self._state.faults.get(name)
            return counters.faults if counters is not None else None

    def take_stream_faults(self, name: str) -> tuple[float, int | None]:
        """Consume one stall and one drop for a GET body of ``name``."""
        with self._state.lock:
            counters = self._state.faults.get(name)
            if counters is None:
                return 0.0, None
            stall = 0.0
            if counters.faults.stall_seconds > 0 and counters.stalls_left != 0:
                stall = counters.faults.stall_seconds
                if counters.stalls_left is not None:
                    counters.stalls_left -= 1
            drop = None
            if counters.drops_left > 0:
                drop = counters.faults.drop_after
                counters.drops_left -= 1
            return stall, drop

    def _resolve(self, name: str) -> Path | None:
        root = self.root.resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path


class TlsFileServer(FileServer):
    """A ``FileServer`` over HTTPS; clients trust ``ca_file``."""

    def __init__(self, root: Path, base_url: str, ca: CertAuthority) -> None:
        super().__init__(root, base_url)
        self.ca_file = ca.cert_file
        self._ca = ca

    def client_ssl_context(self) -> ssl.SSLContext:
        return self._ca.client_ssl_context()


def _finish(record: AccessRecord, response: web.StreamResponse) -> web.StreamResponse:
    record.status = response.status
    record.completed = True
    return response


def _validators(path: Path) -> tuple[int, str, str, float]:
    """Size, strong ETag and Last-Modified (and mtime) from the file's stat."""
    st = path.stat()
    etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    return st.st_size, etag, email.utils.formatdate(st.st_mtime, usegmt=True), st.st_mtime


def _requested_range(header: str | None, size: int) -> tuple[int, int | None] | None:
    """One ``bytes=`` range as (first, last-or-None); None when absent or unusable."""
    if not header or not header.startswith("bytes="):
        return None
    first, sep, last = header[len("bytes=") :].strip().partition("-")
    if not sep or (first and not first.isdigit()) or not (first or last.isdigit()):
        return None
    if not first:  # suffix range: the last N bytes
        return max(size - int(last), 0) if int(last) > 0 else size, None
    if last and (not last.isdigit() or int(last) < int(first)):
        return None
    return int(first), int(last) if last else None


def _if_range_holds(value: str | None, etag: str, mtime: float) -> bool:
    if value is None:
        return True
    if value.startswith(('"', "W/")):
        return value == etag
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False
    return int(when.timestamp()) == int(mtime)


@dataclass(frozen=True)
class _Plan:
    """What a GET/HEAD of a file will send."""

    status: int
    headers: dict[str, str]
    start: int
    length: int


def _plan(request: web.Request, record: AccessRecord, path: Path, faults: Faults) -> _Plan:
    size, etag, last_modified, mtime = _validators(path)
    headers = {
        "ETag": etag,
        "Last-Modified": last_modified,
        "Content-Type": "application/octet-stream",
    }
    record.range = _requested_range(request.headers.get("Range"), size)
    if faults.no_range:
        return _Plan(200, headers, 0, size)
    headers["Accept-Ranges"] = "bytes"
    if record.range is None or not _if_range_holds(request.headers.get("If-Range"), etag, mtime):
        return _Plan(200, headers, 0, size)
    start, last = record.range
    if start >= size:
        headers["Content-Range"] = f"bytes */{size}"
        return _Plan(416, headers, 0, 0)
    end = size - 1 if last is None else min(last, size - 1)
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return _Plan(206, headers, start, end - start + 1)


async def _serve_file(
    request: web.Request, record: AccessRecord, path: Path, faults: Faults, server: FileServer
) -> web.StreamResponse:
    plan = _plan(request, record, path, faults)
    if plan.status == 416:
        return _finish(record, web.Response(status=416, headers=plan.headers))
    response = web.StreamResponse(status=plan.status, headers=plan.headers)
    record.status = plan.status
    if faults.no_content_length:
        response.enable_chunked_encoding()
    else:
        response.content_length = plan.length
    if request.method == "HEAD":
        record.completed = True
        await response.prepare(request)
        await response.write_eof()
        return response
    stall, drop = server.take_stream_faults(request.path.lstrip("/"))
    faults = server.faults_for(request.path.lstrip("/"))
    await response.prepare(request)
    if stall > 0:
        await asyncio.sleep(stall)
    rate = faults.rate if faults is not None else None
    await _stream(request, response, record, path, (plan.start, plan.length), drop, rate)
    return response


async def _stream(
    request: web.Request,
    response: web.StreamResponse,
    record: AccessRecord,
    path: Path,
    span: tuple[int, int],
    drop: int | None,
    rate: int | None,
) -> None:
    # The record is updated before each write so a client that has seen the
    # bytes always finds them in the log.
    start, length = span
    limit = length if drop is None else min(length, drop)
    sent = 0
    with path.open("rb") as source:
        source.seek(start)
        while sent < limit:
            chunk = source.read(min(CHUNK_SIZE, limit - sent))
            if not chunk:
                break
            sent += len(chunk)
            record.bytes_sent = sent
            record.completed = sent == length
            try:
                await response.write(chunk)
            except ConnectionError:  # the client went away: nothing to finish
                record.completed = False
                return
            if rate:
                await asyncio.sleep(len(chunk) / rate)
    if sent < length:
        assert request.transport is not None
        request.transport.close()  # flushes the bytes written so far, then closes
        return
    record.completed = True
    await response.write_eof()


async def _start(server: FileServer, ssl_context: ssl.SSLContext | None) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner


def _port(runner: web.AppRunner) -> int:
    addresses = runner.addresses
    return int(addresses[0][1])


@pytest.fixture(scope="session")
def _http_server_session() -> Iterator[FileServer]:
    root = Path(tempfile.mkdtemp(prefix="diskplane-http-"))
    thread = LoopThread("http-file-server")
    server = FileServer(root, "http://127.0.0.1:0")
    try:
        runner = thread.run(_start(server, None))
        server.base_url = f"http://127.0.0.1:{_port(runner)}"
        yield server
        thread.run(runner.cleanup())
    finally:
        thread.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def _https_server_session(test_ca: CertAuthority) -> Iterator[TlsFileServer]:
    root = Path(tempfile.mkdtemp(prefix="diskplane-https-"))
    thread = LoopThread("https-file-server")
    cert = test_ca.issue(root.parent / f"{root.name}-tls")
    server = TlsFileServer(root, "https://127.0.0.1:0", test_ca)
    try:
        runner = thread.run(_start(server, cert.server_ssl_context()))
        server.base_url = f"https://127.0.0.1:{_port(runner)}"
        yield server
        thread.run(runner.cleanup())
    finally:
        thread.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(cert.cert_file.parent, ignore_errors=True)


@pytest.fixture
def http_server(_http_server_session: FileServer) -> FileServer:
    """The session HTTP file server, reset for this test."""
    _http_server_session.reset()
    return _http_server_session


@pytest.fixture
def https_server(_https_server_session: TlsFileServer) -> TlsFileServer:
    """The session HTTPS file server, reset for this test."""
    _https_server_session.reset()
    return _https_server_session
