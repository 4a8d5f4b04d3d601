"""A small typed client of the importer service (what controllers and the CLI call).

Every failure surfaces as :class:`~cdi.service.errors.ClientError` (with the
HTTP status, 0 when the service did not answer); no aiohttp exception
leaves this module.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from cdi.service.errors import ClientError
from cdi.service.model import VolumeRef

JsonObject = dict[str, Any]
# Bytes per read of a file being uploaded (and per progress callback).
UPLOAD_READ_CHUNK = 4 * 1024 * 1024
# Reconnects after a dropped upload connection before giving up.
UPLOAD_RETRIES = 8
UPLOAD_RETRY_BACKOFF = 0.5
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=30, sock_read=300)


@dataclass(frozen=True)
class JobStatus:
    """The fields of an ImportJob most callers need; ``raw`` has all of them."""

    id: str
    phase: str
    progress: str
    bytes_read: int
    bytes_total: int | None
    queue_position: int | None
    reason: str | None
    message: str | None
    raw: JsonObject

    @classmethod
    def from_json(cls, body: JsonObject) -> JobStatus:
        return cls(
            id=body["id"],
            phase=body["phase"],
            progress=body["progress"],
            bytes_read=body["bytesRead"],
            bytes_total=body["bytesTotal"],
            queue_position=body["queuePosition"],
            reason=body["reason"],
            message=body["message"],
            raw=body,
        )

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed", "Cancelled")


@dataclass(frozen=True)
class UploadStatus:
    job_id: str
    bytes_received: int
    total_bytes: int | None
    complete: bool
    phase: str


class ImporterClient:
    """``async with ImporterClient(url, token=...) as client: ...``"""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session = aiohttp.ClientSession(timeout=timeout)

    async def __aenter__(self) -> ImporterClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    # -- jobs ----------------------------------------------------------------

    async def create_import(self, request: JsonObject) -> JobStatus:
        return JobStatus.from_json(await self._json("POST", "/v1/imports", request))

    async def get_import(self, job_id: str) -> JobStatus:
        return JobStatus.from_json(await self._json("GET", f"/v1/imports/{job_id}"))

    async def list_imports(self) -> list[JobStatus]:
        body = await self._json("GET", "/v1/imports")
        return [JobStatus.from_json(item) for item in body["items"]]

    async def cancel_import(self, job_id: str) -> JobStatus:
        return JobStatus.from_json(await self._json("DELETE", f"/v1/imports/{job_id}"))

    async def events(self, job_id: str) -> AsyncIterator[JobStatus]:
        """Progress snapshots until the job ends (the last one is final)."""
        try:
            async with self._session.get(
                self._url(f"/v1/imports/{job_id}/events"), headers=self._auth(), ssl=self._ssl
            ) as response:
                await _raise_for(response)
                async for line in response.content:
                    if line.startswith(b"data: "):
                        yield JobStatus.from_json(json.loads(line[6:]))
        except aiohttp.ClientError as exc:
            raise ClientError(f"progress stream of job {job_id} broke: {exc}") from exc

    async def wait(
        self, job_id: str, on_progress: Callable[[JobStatus], None] | None = None
    ) -> JobStatus:
        last: JobStatus | None = None
        async for status in self.events(job_id):
            last = status
            if on_progress is not None:
                on_progress(status)
        return last if last is not None else await self.get_import(job_id)

    async def upload_token(self, volume: VolumeRef, ttl_seconds: int | None = None) -> str:
        body: JsonObject = {"target": volume.to_json()}
        if ttl_seconds is not None:
            body["ttlSeconds"] = ttl_seconds
        return str((await self._json("POST", "/v1/upload-tokens", body))["token"])

    # -- uploads -------------------------------------------------------------

    async def upload_status(self, volume: VolumeRef, token: str) -> UploadStatus:
        body = await self._json("GET", _upload_path(volume), auth=f"Bearer {token}")
        return UploadStatus(
            body["jobId"],
            body["bytesReceived"],
            body["totalBytes"],
            body["complete"],
            body["phase"],
        )

    async def upload_file(
        self,
        path: Path,
        volume: VolumeRef,
        token: str,
        *,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> UploadStatus:
        """Stream ``path`` (async endpoint), resuming after dropped connections."""
        total = (await asyncio.to_thread(path.stat)).st_size
        for attempt in range(UPLOAD_RETRIES + 1):
            status = await self.upload_status(volume, token)
            if status.complete:
                return status
            try:
                return await self._upload_from(
                    path, volume, token, status.bytes_received, total, on_progress
                )
            except ClientError as exc:
                # 0: the connection broke; 409: the server still finishes the broken request.
                if exc.status not in (0, 409) or attempt == UPLOAD_RETRIES:
                    raise
                await asyncio.sleep(UPLOAD_RETRY_BACKOFF * 2**attempt)
        raise AssertionError("unreachable")

    async def _upload_from(
        self,
        path: Path,
        volume: VolumeRef,
        token: str,
        offset: int,
        total: int,
        on_progress: Callable[[int, int], None] | None,
    ) -> UploadStatus:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
        if total:
            headers["Content-Range"] = f"bytes {offset}-{total - 1}/{total}"
        body = _file_chunks(path, offset, total, on_progress)
        try:
            async with self._session.put(
                self._url(_upload_path(volume) + "/async"),
                data=body,
                headers=headers,
                ssl=self._ssl,
            ) as response:
                await _raise_for(response)
                data = await response.json()
        except aiohttp.ClientError as exc:
            raise ClientError(f"upload to volume {volume} broke off: {type(exc).__name__}") from exc
        return UploadStatus(
            data["jobId"],
            data["bytesReceived"],
            data["totalBytes"],
            data["complete"],
            data["phase"],
        )

    # -- plumbing ------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def _json(
        self, method: str, path: str, body: JsonObject | None = None, auth: str | None = None
    ) -> JsonObject:
        headers = {"Authorization": auth} if auth else self._auth()
        try:
            async with self._session.request(
                method, self._url(path), json=body, headers=headers, ssl=self._ssl
            ) as response:
                await _raise_for(response)
                result: JsonObject = await response.json()
                return result
        except aiohttp.ClientError as exc:
            raise ClientError(f"{method} {path} failed: {type(exc).__name__}: {exc}") from exc


def _upload_path(volume: VolumeRef) -> str:
    return f"/v1/uploads/{volume.namespace}/{volume.name}"


async def _raise_for(response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    try:
        body = await response.json(content_type=None)
        message, field = str(body.get("error")), body.get("field")
    except (ValueError, aiohttp.ClientError, AttributeError):
        message, field = f"HTTP {response.status}", None
    raise ClientError(message, status=response.status, field=field)


async def _file_chunks(
    path: Path, offset: int, total: int, on_progress: Callable[[int, int], None] | None
) -> AsyncIterator[bytes]:
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
    try:
        position = offset
        while position < total:
            chunk = await asyncio.to_thread(os.pread, fd, UPLOAD_READ_CHUNK, position)
            if not chunk:
                break
            position += len(chunk)
            yield chunk
            if on_progress is not None:
                on_progress(position, total)
    finally:
        os.close(fd)
