"""HTTP(S) source: HEAD then GET, redirects resolved once, concurrent Range GETs.

This module is the one place that translates aiohttp's exceptions and HTTP
statuses into ``cdi.errors``.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import re
import socket
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path

import aiohttp

from cdi.errors import (
    AuthFailed,
    FinalImportError,
    ImportError,
    InvalidRequest,
    SourceChanged,
    SourceNotFound,
    SourceUnavailable,
    TransferStalled,
)
from cdi.formats.detect import HEADER_BYTES
from cdi.settings import ImportSettings
from cdi.sources.base import SourceInfo, redact_url, with_retries

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
USER_AGENT = "diskplane-importer"


def status_error(status: int, what: str, retry_after: str | None) -> ImportError:
    """Translate an HTTP status into our error tree."""
    if status in (408, 429) or status >= 500:
        seconds = float(retry_after) if retry_after and retry_after.isdigit() else None
        return SourceUnavailable(f"{what} answered HTTP {status}; will retry", retry_after=seconds)
    if status in (401, 403):
        return AuthFailed(f"{what} refused access (HTTP {status}); check the credentials")
    if status in (404, 410):
        return SourceNotFound(f"{what} does not exist (HTTP {status})")
    if status == 412:
        return SourceChanged(f"{what} changed during the import (HTTP 412)")
    return FinalImportError(f"{what} answered HTTP {status}")


def _ssl_context(url: str, ca_file: Path | None, insecure: bool) -> ssl.SSLContext | bool:
    if insecure:
        return False
    if not url.startswith("https://"):
        return True  # plain http: loading the system CAs (~60 ms) would be wasted
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def _unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class HttpSource:
    """One HTTP(S) URL; the session lives from ``probe`` to ``aclose``."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        basic: tuple[str, str] | None,
        ca_file: Path | None,
        insecure: bool,
        settings: ImportSettings,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InvalidRequest(f"{redact_url(url)} is not an http(s) URL")
        self.url = url
        self.description = redact_url(url)
        self._headers = {"User-Agent": USER_AGENT, **headers}
        if basic:
            token = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._ssl = _ssl_context(url, ca_file, insecure)
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._validator: str | None = None
        self._if_range: str | None = None
        self.supports_ranges = False
        self._live: set[http.client.HTTPConnection] = set()
        self._live_lock = threading.Lock()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=None,
                sock_connect=self._settings.connect_timeout,
                sock_read=self._settings.read_timeout,
            )
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=self._settings.concurrency + 2)
            self._session = aiohttp.ClientSession(
                timeout=timeout, connector=connector, trust_env=True
            )
        return self._session

    async def aclose(self) -> None:
        self.abort_blocking()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(self) -> SourceInfo:
        return await with_retries(self._settings, self._probe_once)

    async def _probe_once(self) -> SourceInfo:
        try:
            size = await self._probe_head()
            return await self._probe_get(size)
        except ImportError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _network_error(self.description, exc) from exc

    async def revalidate(self, saved: SourceInfo) -> SourceInfo | None:
        """One HEAD: ``saved`` (a journalled probe) if size and validator still match."""
        if saved.validator is None or not saved.supports_ranges:
            return None
        size = await with_retries(self._settings, self._head_once)
        if size is None or size != saved.size or self._validator != saved.validator:
            return None
        self.supports_ranges = True
        return saved

    async def _head_once(self) -> int | None:
        try:
            return await self._probe_head()
        except ImportError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _network_error(self.description, exc) from exc

    async def _probe_head(self) -> int | None:
        """HEAD, best effort: resolves redirects and learns the size and validator."""
        try:
            async with self._client().head(
                self.url, headers=self._headers, allow_redirects=True
            ) as resp:
                # Some servers (busybox httpd) send a body after HEAD: never reuse it.
                resp.close()
                if resp.status < 300:
                    self.url = str(resp.url)  # redirects resolved once, reused after
                    self._remember_validator(resp.headers)
                    return _int(resp.headers.get("Content-Length"))
                if resp.status not in (405, 501):
                    raise status_error(resp.status, self.description, _retry_after(resp))
                return None
        except aiohttp.ClientResponseError:
            return None  # a broken HEAD answer: the GET probe learns the same

    async def _probe_get(self, size: int | None) -> SourceInfo:
        headers = {**self._headers, "Range": f"bytes=0-{HEADER_BYTES - 1}"}
        async with self._client().get(self.url, headers=headers, allow_redirects=True) as resp:
            if resp.status == 416:
                return SourceInfo(0, True, self._validator, b"")
            if resp.status >= 300:
                raise status_error(resp.status, self.description, _retry_after(resp))
            self.url = str(resp.url)
            if self._validator is None:
                self._remember_validator(resp.headers)
            head = await resp.content.read(HEADER_BYTES)
            while len(head) < HEADER_BYTES and not resp.content.at_eof():
                more = await resp.content.read(HEADER_BYTES - len(head))
                if not more:
                    break
                head += more
            if resp.status == 206:
                match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                if match and match.group(3) != "*":
                    size = int(match.group(3))
                self.supports_ranges = size is not None
            else:
                size = _int(resp.headers.get("Content-Length"))
                self.supports_ranges = False
                resp.close()  # do not drain the whole body
            return SourceInfo(size, self.supports_ranges, self._validator, head)

    def _remember_validator(self, headers: Mapping[str, str]) -> None:
        etag = headers.get("ETag")
        modified = headers.get("Last-Modified")
        if etag and not etag.startswith("W/"):
            self._validator, self._if_range = f"etag:{etag}", etag
        elif modified:
            self._validator, self._if_range = f"last-modified:{modified}", modified

    async def stream(self, start: int, end: int | None) -> AsyncGenerator[bytes, None]:
        headers = dict(self._headers)
        ranged = start > 0 or end is not None
        if ranged:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
            if self._if_range:
                headers["If-Range"] = self._if_range
        try:
            async with self._client().get(self.url, headers=headers, allow_redirects=False) as resp:
                if resp.status >= 300:
                    raise status_error(
                        resp.status, self.description, resp.headers.get("Retry-After")
                    )
                if ranged and resp.status != 206:
                    raise SourceChanged(
                        f"{self.description} answered a ranged request with the whole "
                        "file; it changed since the import started"
                    )
                async for piece in resp.content.iter_chunked(1024 * 1024):
                    yield piece
        except ImportError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _network_error(self.description, exc) from exc

    # -- blocking ranged fetches (RangedTransfer's fast path) -----------------

    def blocking_ranges(self) -> bool:
        """True when ``fetch_into`` can serve ranges: ranges supported, no proxy."""
        parts = urllib.parse.urlsplit(self.url)
        if not self.supports_ranges or parts.scheme not in ("http", "https"):
            return False
        proxies = urllib.request.getproxies()
        return parts.scheme not in proxies or bool(urllib.request.proxy_bypass(parts.netloc))

    def fetch_into(self, start: int, view: memoryview, got: Callable[[int], None]) -> None:
        """Blocking: GET ``[start, start+len(view))`` received straight into ``view``.

        ``got(n)`` is called (on this thread) after every read, so a drop keeps
        what arrived; a short body raises nothing (the caller checks the count).
        Runs on a worker thread: the socket reads release the GIL, and no bytes
        object is made per piece.
        """
        conn = self._connection()
        try:
            self._request(conn, start, start + len(view))
            resp = conn.getresponse()
            self._check(resp)
            pos = 0
            while pos < len(view):
                n = resp.readinto(view[pos : pos + _READ])
                if not n:
                    return
                pos += n
                got(n)
        except ImportError:
            raise
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise _blocking_error(self.description, exc) from exc
        finally:
            self._forget(conn)

    def abort_blocking(self) -> None:
        """Shut the sockets of fetches in flight so their threads return now."""
        with self._live_lock:
            live = list(self._live)
        for conn in live:
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _connection(self) -> http.client.HTTPConnection:
        parts = urllib.parse.urlsplit(self.url)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            context = self._ssl if isinstance(self._ssl, ssl.SSLContext) else None
            if self._ssl is False:
                context = _unverified_context()
            conn = http.client.HTTPSConnection(
                parts.netloc, timeout=self._settings.connect_timeout, context=context
            )
        else:
            conn = http.client.HTTPConnection(parts.netloc, timeout=self._settings.connect_timeout)
        with self._live_lock:
            self._live.add(conn)
        return conn

    def _forget(self, conn: http.client.HTTPConnection) -> None:
        with self._live_lock:
            self._live.discard(conn)
        conn.close()

    def _request(self, conn: http.client.HTTPConnection, start: int, end: int) -> None:
        parts = urllib.parse.urlsplit(self.url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        headers = {**self._headers, "Range": f"bytes={start}-{end - 1}"}
        if self._if_range:
            headers["If-Range"] = self._if_range
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(self._settings.read_timeout)
        conn.request("GET", target, headers=headers)

    def _check(self, resp: http.client.HTTPResponse) -> None:
        if resp.status >= 300:
            raise status_error(resp.status, self.description, resp.getheader("Retry-After"))
        if resp.status != 206:
            raise SourceChanged(
                f"{self.description} answered a ranged request with the whole "
                "file; it changed since the import started"
            )


#: Bytes per socket read of the blocking fetch (one GIL release each).
_READ = 1024 * 1024


def _blocking_error(what: str, exc: BaseException) -> ImportError:
    if isinstance(exc, TimeoutError):
        return TransferStalled(f"{what} sent nothing for too long; will retry")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return FinalImportError(f"TLS verification of {what} failed; pass its CA or --insecure")
    return SourceUnavailable(f"connection to {what} failed ({type(exc).__name__}); will retry")


def _network_error(what: str, exc: BaseException) -> ImportError:
    if isinstance(exc, asyncio.TimeoutError | aiohttp.SocketTimeoutError):
        return TransferStalled(f"{what} sent nothing for too long; will retry")
    if isinstance(exc, aiohttp.ClientSSLError | aiohttp.ClientConnectorCertificateError):
        return FinalImportError(f"TLS verification of {what} failed; pass its CA or --insecure")
    if isinstance(exc, aiohttp.InvalidURL):
        return InvalidRequest(f"{what} is not a valid URL")
    return SourceUnavailable(f"connection to {what} failed ({type(exc).__name__}); will retry")


def _retry_after(resp: aiohttp.ClientResponse) -> str | None:
    return resp.headers.get("Retry-After")


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None
