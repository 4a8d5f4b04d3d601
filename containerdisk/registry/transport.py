"""HTTP to a registry: scheme choice, auth, retries, and error translation.

This module is the one place where aiohttp's exceptions become containerdisk
errors (:func:`translate_errors`). Retries happen only for connection errors,
5xx and 429 answers (``Retry-After`` honoured up to the backoff cap), and only
for requests whose body can be sent again; uploads handle their own resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp

from containerdisk.errors import (
    AuthenticationFailed,
    ContainerDiskError,
    InsecureRegistryRefused,
    NotFound,
    RegistryError,
    RegistryUnavailable,
)
from containerdisk.reference import DOCKER_HUB, DOCKER_HUB_API_HOST, Reference
from containerdisk.registry.auth import Authenticator, Credentials, resolve_credentials

MiB = 1024 * 1024
_ERROR_BODY_LIMIT = 4096
_INLINE_BODY_LIMIT = 512 * 1024
_BODY_SLICE = 1024 * 1024
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RegistrySettings:
    """Timeouts, retries and transfer sizes of :class:`~containerdisk.RegistryClient`."""

    connect_timeout: float = 15.0  # seconds to open a connection
    read_timeout: float = 60.0  # seconds without a byte on an open connection
    retry_attempts: int = 5  # tries per request for connection errors, 5xx and 429
    retry_backoff: float = 0.25  # first pause; doubles each try
    retry_backoff_max: float = 8.0
    chunk_size: int = 16 * MiB  # PATCH size of a chunked upload (also its resend buffer)
    parallel_blobs: int = 3  # blobs transferred at once (peers use 3-5)
    segment_size: int = 64 * MiB  # artifact segment size (uncompressed bytes)
    connections_per_host: int = 8


Body = bytes | Callable[[], Any] | None


class _Retry(Exception):
    """Internal: this attempt failed in a way worth another try."""

    def __init__(self, cause: str, delay: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.delay = delay


@contextlib.asynccontextmanager
async def translate_errors(what: str) -> AsyncIterator[None]:
    """Turn aiohttp/OS/timeout errors raised inside the block into containerdisk errors."""
    try:
        yield
    except ContainerDiskError:
        raise
    except aiohttp.ClientConnectorCertificateError as exc:
        raise RegistryError(
            f"{what}: the registry's TLS certificate is not trusted ({exc.certificate_error});"
            " pass --ca-file with its CA, or --insecure"
        ) from exc
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise RegistryUnavailable(f"{what}: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(
        exc, aiohttp.ClientSSLError
    ):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return False
    return isinstance(
        exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | TimeoutError
    )


async def raise_for_status(resp: aiohttp.ClientResponse, what: str, user: str | None) -> None:
    """Raise the containerdisk error for a non-2xx answer (with the registry's error code)."""
    if resp.status < 400:
        return
    detail = await _error_detail(resp)
    if resp.status in (401, 403):
        who = f"as user {user!r}" if user else "anonymously"
        raise AuthenticationFailed(
            f"{what}: the registry refused access {who} (HTTP {resp.status}{detail});"
            " check the username and password, or the token's scope"
        )
    if resp.status == 404:
        raise NotFound(f"{what}: not found (HTTP 404{detail})")
    if resp.status in _RETRY_STATUSES:
        raise RegistryUnavailable(f"{what}: HTTP {resp.status}{detail}, after retries")
    raise RegistryError(f"{what}: HTTP {resp.status}{detail}")


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body up to its end, or its first ``limit`` + 1 bytes when it is longer.

    ``StreamReader.read(n)`` returns whatever has arrived (a body split over TCP
    reads comes back short), so this reads until the end or past the limit.
    """
    body = bytearray()
    while len(body) <= limit:
        piece = await resp.content.read(limit + 1 - len(body))
        if not piece:
            break
        body += piece
    return bytes(body)


async def _error_detail(resp: aiohttp.ClientResponse) -> str:
    with contextlib.suppress(Exception):
        raw = await read_capped(resp, _ERROR_BODY_LIMIT)
        errors = json.loads(raw).get("errors") or []
        if errors:
            code = str(errors[0].get("code", ""))[:60]
            message = str(errors[0].get("message", ""))[:120]
            return f", {code}: {message}" if message else f", {code}"
    return ""


class Transport:
    """One aiohttp session; per-registry scheme, TLS and auth state."""

    def __init__(
        self,
        settings: RegistrySettings,
        credentials: Credentials,
        auth_file: Path | None,
        ca_file: Path | None,
        insecure: bool,
    ) -> None:
        self.settings = settings
        self._credentials = credentials
        self._auth_file = auth_file
        self._insecure = insecure
        self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._session: aiohttp.ClientSession | None = None
        self._bases: dict[str, tuple[str, ssl.SSLContext | bool]] = {}
        self._auth: dict[str, Authenticator] = {}
        self._probe_locks: dict[str, asyncio.Lock] = {}

    async def open(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.settings.connect_timeout,
            sock_read=self.settings.read_timeout,
        )
        connector = aiohttp.TCPConnector(limit_per_host=self.settings.connections_per_host)
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            connector=connector,
            auto_decompress=False,
            headers={"User-Agent": "diskplane-containerdisk"},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RegistryError(
                "registry client is not open; use it as `async with RegistryClient(...)`"
            )
        return self._session

    def authenticator(self, registry: str) -> Authenticator:
        if registry not in self._auth:
            creds = resolve_credentials(registry, self._credentials, self._auth_file)
            self._auth[registry] = Authenticator(registry, creds, self._fetch_token)
        return self._auth[registry]

    def user(self, registry: str) -> str | None:
        return self.authenticator(registry).credentials.username

    async def base(self, ref: Reference) -> tuple[str, ssl.SSLContext | bool]:
        """``scheme://host`` and the TLS setting for the registry, probed once."""
        host = ref.api_host
        if host in self._bases:
            return self._bases[host]
        lock = self._probe_locks.setdefault(host, asyncio.Lock())
        async with lock:
            if host not in self._bases:
                self._bases[host] = await self._probe_with_retries(host, ref.is_local)
        return self._bases[host]

    async def _probe_with_retries(
        self, host: str, local: bool
    ) -> tuple[str, ssl.SSLContext | bool]:
        delay = self.settings.retry_backoff
        for attempt in range(1, self.settings.retry_attempts + 1):
            try:
                return await self._probe(host, local)
            except RegistryUnavailable:
                if attempt == self.settings.retry_attempts:
                    raise
            await asyncio.sleep(min(delay, self.settings.retry_backoff_max))
            delay *= 2
        raise AssertionError("unreachable")

    async def _probe(self, host: str, local: bool) -> tuple[str, ssl.SSLContext | bool]:
        """HTTPS first; plain HTTP only for local registries or with ``insecure``."""
        what = f"registry {host}"
        try:
            await self._ping(f"https://{host}", self._ssl, what)
            return f"https://{host}", self._ssl
        except aiohttp.ClientConnectorCertificateError:
            if not self._insecure:
                async with translate_errors(what):
                    raise
            await self._ping(f"https://{host}", False, what)
            return f"https://{host}", False
        except aiohttp.ClientConnectorError as exc:
            if not isinstance(exc, aiohttp.ClientSSLError):  # refused, unreachable: not TLS
                async with translate_errors(what):
                    raise
            plain_suspect: BaseException = exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            plain_suspect = exc
        if not (self._insecure or local):
            raise InsecureRegistryRefused(
                f"{what} does not answer HTTPS ({type(plain_suspect).__name__}); plain HTTP is"
                " used only with --insecure (or for localhost)"
            ) from plain_suspect
        async with translate_errors(what):
            await self._ping(f"http://{host}", False, what)
        return f"http://{host}", False

    async def _ping(self, base: str, tls: ssl.SSLContext | bool, what: str) -> None:
        async with self.session.get(f"{base}/v2/", ssl=tls) as resp:
            if resp.status not in (200, 401):
                raise RegistryError(
                    f"{what} answered /v2/ with HTTP {resp.status}; is it a registry?"
                )
            if resp.status == 401:
                host = base.split("://", 1)[1]
                registry = DOCKER_HUB if host == DOCKER_HUB_API_HOST else host
                self.authenticator(registry).learn(resp.headers.get("WWW-Authenticate"))

    async def _fetch_token(
        self, realm: str, query: list[tuple[str, str]], creds: Credentials
    ) -> tuple[str, float]:
        what = f"token request to {realm.split('?')[0]}"
        headers = {}
        if basic := creds.basic_header():
            headers["Authorization"] = basic
        params = [q for q in query if q[1]]
        if creds.identity_token:  # OAuth2 refresh-token grant (docker login's identitytoken)
            form = [
                *params,
                ("grant_type", "refresh_token"),
                ("client_id", "diskplane"),
                ("refresh_token", creds.identity_token),
            ]
            request = self.session.post(realm, data=form, ssl=self._ssl)
        else:
            request = self.session.get(realm, params=params, headers=headers, ssl=self._ssl)
        async with translate_errors(what), request as resp:
            await raise_for_status(resp, what, creds.username)
            try:
                obj = json.loads(await read_capped(resp, 64 * 1024))
                token = str(obj.get("token") or obj["access_token"])
            except (ValueError, KeyError, AttributeError) as exc:
                raise AuthenticationFailed(f"{what} answered without a token") from exc
            return token, float(obj.get("expires_in") or 60)

    async def request(
        self,
        method: str,
        ref: Reference,
        path: str,
        *,
        scope: str,
        what: str,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        ok: tuple[int, ...] = (200,),
        retry: bool = True,
    ) -> aiohttp.ClientResponse:
        """Send with auth and retries; return the (unread) response whose status is in ``ok``.

        The caller reads the body and releases the response (``async with``).
        """
        base, tls = await self.base(ref)
        url = (
            path
            if path.startswith(("http://", "https://"))
            else urljoin(base + "/", path.lstrip("/"))
        )
        auth = self.authenticator(ref.registry)
        attempts = self.settings.retry_attempts if retry else 1
        attempt, challenged = 0, False
        delay = self.settings.retry_backoff
        while True:
            attempt += 1
            send_headers = dict(headers or {})
            if not self._credentials.token:
                await auth.prepare(scope)
            if self._credentials.token:
                send_headers["Authorization"] = f"Bearer {self._credentials.token}"
            elif header := auth.header(scope):
                send_headers["Authorization"] = header
            try:
                resp = await self._send(method, url, tls, send_headers, body, what)
            except _Retry as exc:
                if attempt >= attempts:
                    raise RegistryUnavailable(
                        f"{what}: {exc.cause}, after {attempt} tries"
                    ) from exc
                await asyncio.sleep(min(exc.delay or delay, self.settings.retry_backoff_max))
                delay *= 2
                continue
            if resp.status == 401 and not challenged and not self._credentials.token:
                challenged = True
                if await auth.answer(resp.headers.get("WWW-Authenticate"), scope):
                    resp.release()
                    attempt -= 1  # learning the auth scheme is not a failed try
                    continue
            if resp.status in ok:
                return resp
            try:
                await raise_for_status(resp, what, auth.credentials.username)
                raise RegistryError(f"{what}: unexpected HTTP {resp.status}")
            finally:
                resp.release()

    async def _send(
        self,
        method: str,
        url: str,
        tls: ssl.SSLContext | bool,
        headers: dict[str, str],
        body: Body,
        what: str,
    ) -> aiohttp.ClientResponse:
        data = body() if callable(body) else body
        if isinstance(data, bytes):
            headers = {**headers, "Content-Length": str(len(data))}
            if len(data) > _INLINE_BODY_LIMIT:
                data = _slices(data)  # written straight to the socket, no executor hops
        async with translate_errors(what):
            try:
                resp = await self.session.request(method, url, headers=headers, data=data, ssl=tls)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if _retryable(exc):
                    raise _Retry(_describe(exc)) from exc
                raise
        if resp.status in _RETRY_STATUSES:
            retry_after = _retry_after(resp.headers.get("Retry-After"))
            resp.release()
            raise _Retry(f"HTTP {resp.status}", retry_after)
        return resp


async def _slices(data: bytes) -> AsyncIterator[memoryview]:
    view = memoryview(data)
    for start in range(0, len(view), _BODY_SLICE):
        yield view[start : start + _BODY_SLICE]


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
