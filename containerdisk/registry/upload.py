"""Blob uploads: POST, then PATCH chunks in order, then ``PUT ?digest=``.

Why chunked PATCH: a containerDisk layer's size and digest are only known
once it has streamed (it is compressed on the fly), and the monolithic
``PUT ?digest=`` needs the digest up front. Chunked PATCH needs neither; the
final PUT names the digest we computed inline. Each PATCH streams its body
while the chunk is still being produced (no wait for a full buffer); each chunk
(``chunk_size``, 16 MiB by default) is kept until the registry accepted it, so a
PATCH cut by a connection error or refused with 5xx is resumed from the offset
the registry reports (``GET`` on the upload URL, ``Range: 0-N``). One blob's
chunks must go in order (the spec), so parallelism comes from several blobs.

Blobs whose bytes are in memory (configs, compressed segments) or whose digest
is known before upload (raw segments) go as one ``PUT ?digest=``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
from yarl import URL

from containerdisk.errors import (
    AuthenticationFailed,
    NotFound,
    RegistryError,
    RegistryUnavailable,
    UploadFailed,
)
from containerdisk.reference import Reference
from containerdisk.registry.blobs import head_blob, push_scope
from containerdisk.registry.transport import Transport, translate_errors


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _offset_from_range(value: str | None) -> int | None:
    """``0-N`` -> N+1; ``0-0`` is how distribution 2.8 says "empty" (never 1 byte for us)."""
    if not value:
        return None
    start, _, end = value.partition("-")
    if start == "0" and end in ("0", "-1"):
        return 0
    try:
        return max(0, int(end) + 1)
    except ValueError:
        return None


class BlobUpload:
    """One blob upload session; feed :meth:`write` in order, then :meth:`finish`."""

    def __init__(self, transport: Transport, ref: Reference, what: str) -> None:
        self._transport = transport
        self._ref = ref
        self._what = what
        self._location: str | None = None
        self._open: _StreamingPatch | None = None
        self._stream_bodies = True  # False once a registry refused a PATCH without Content-Range
        self.offset = 0  # bytes the registry holds
        self.patches = 0
        self.resumes = 0

    @property
    def location(self) -> str:
        """The upload URL the registry gave us last (it changes with every answer)."""
        if self._location is None:
            raise UploadFailed(f"{self._what}: the upload was not started")
        return self._location

    @property
    def _chunk_size(self) -> int:
        return self._transport.settings.chunk_size

    async def start(self, *, mount: tuple[str, str] | None = None) -> bool:
        """Open the session; True when ``mount=(digest, from_repo)`` made the upload unneeded."""
        path = f"/v2/{self._ref.repository}/blobs/uploads/"
        scope = push_scope(self._ref)
        if mount:
            path += "?" + urlencode({"mount": mount[0], "from": mount[1]})
            scope += f" repository:{mount[1]}:pull"
        resp = await self._transport.request(
            "POST", self._ref, path, scope=scope, what=self._what, ok=(201, 202)
        )
        async with resp:
            if resp.status == 201:
                return True
            self._location = self._absolute(resp, resp.headers.get("Location"))
        return False

    def _absolute(self, resp: aiohttp.ClientResponse, location: str | None) -> str:
        if not location:
            raise UploadFailed(f"{self._what}: the registry answered without an upload Location")
        return str(resp.url.join(URL(location)))

    async def write(self, data: bytes) -> None:
        """Stream ``data`` into the open PATCH; it is closed once ``chunk_size`` bytes went in.

        The PATCH starts with the chunk's first bytes (its body streams while the rest
        is produced); the chunk's bytes are also kept until the registry accepted them,
        so a failed PATCH can be resumed from the offset the registry reports.
        """
        if self._open is None:
            self._open = _StreamingPatch(self, stream=self._stream_bodies)
        self._open.feed(data)
        if self._open.size >= self._chunk_size:
            await self._close_patch()

    async def _close_patch(self) -> None:
        patch, self._open = self._open, None
        if patch is None:
            return
        start = self.offset
        if not patch.streaming:
            await self._send(b"".join(patch.pieces), start, failed=False)
            return
        try:
            await patch.close()
        except (AuthenticationFailed, NotFound):
            raise
        except RegistryError as exc:
            if not isinstance(exc, RegistryUnavailable):
                # A registry that wants Content-Range on every PATCH: buffer chunks from now on.
                self._stream_bodies = False
            self.offset = start
            await self._send(b"".join(patch.pieces), start, failed=True)
            return
        self.patches += 1
        self._advance(patch.reported, start + patch.size)

    async def abort(self, *, delete: bool = True) -> None:
        """Stop a PATCH in flight and (best effort) cancel the session at the registry."""
        patch, self._open = self._open, None
        if patch is not None:
            await patch.cancel()
        if delete and self._location is not None:
            with contextlib.suppress(RegistryError):
                resp = await self._transport.request(
                    "DELETE",
                    self._ref,
                    self._location,
                    scope=push_scope(self._ref),
                    what=f"{self._what} (cancel)",
                    ok=(204, 200, 202, 404),
                    retry=False,
                )
                resp.release()

    async def finish(self, digest: str) -> None:
        """Send what is buffered and commit the blob under ``digest``."""
        await self._close_patch()
        assert self._location is not None
        resp = await self._transport.request(
            "PUT",
            self._ref,
            _with_query(self._location, digest=digest),
            scope=push_scope(self._ref),
            what=self._what,
            headers={"Content-Length": "0"},
            body=b"",
            ok=(201, 204),
        )
        resp.release()

    async def _send(self, chunk: bytes, start: int, *, failed: bool) -> None:
        """PATCH ``chunk`` with its Content-Range; after a failure, from the registry's offset."""
        attempts = self._transport.settings.retry_attempts
        delay = self._transport.settings.retry_backoff
        for attempt in range(1, attempts + 1):
            if failed:
                await asyncio.sleep(min(delay, self._transport.settings.retry_backoff_max))
                delay *= 2
                await self._refresh_offset(start, start + len(chunk))
                self.resumes += 1
            failed = True
            skip = self.offset - start
            if skip >= len(chunk):
                return
            try:
                await self._patch(chunk[skip:])
                return
            except RegistryUnavailable:
                if attempt == attempts:
                    raise

    async def _stream_patch(self, body: AsyncIterator[bytes]) -> int | None:
        """One PATCH whose body streams (chunked encoding); the offset the registry reports."""
        resp = await self._transport.request(
            "PATCH",
            self._ref,
            self.location,
            scope=push_scope(self._ref),
            what=self._what,
            headers={"Content-Type": "application/octet-stream"},
            body=lambda: body,
            ok=(202, 204),
            retry=False,
        )
        async with resp:
            self._location = self._absolute(resp, resp.headers.get("Location") or self._location)
            return _offset_from_range(resp.headers.get("Range"))

    def _advance(self, reported: int | None, expected: int) -> None:
        if reported and reported != expected:  # 0 may mean "0-0", i.e. one byte
            raise UploadFailed(
                f"{self._what}: registry holds {reported} bytes, expected {expected}"
            )
        self.offset = expected

    async def _patch(self, piece: bytes) -> None:
        assert self._location is not None
        end = self.offset + len(piece) - 1
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{self.offset}-{end}",
            "Content-Length": str(len(piece)),
        }
        resp = await self._transport.request(
            "PATCH",
            self._ref,
            self._location,
            scope=push_scope(self._ref),
            what=self._what,
            headers=headers,
            body=piece,
            ok=(202, 204),
            retry=False,
        )
        async with resp:
            self._location = self._absolute(resp, resp.headers.get("Location") or self._location)
            reported = _offset_from_range(resp.headers.get("Range"))
        self.patches += 1
        self._advance(reported, self.offset + len(piece))

    async def _refresh_offset(self, low: int, high: int) -> None:
        """Ask the registry how much it holds; it must be inside the chunk we still have."""
        assert self._location is not None
        try:
            resp = await self._transport.request(
                "GET",
                self._ref,
                self._location,
                scope=push_scope(self._ref),
                what=f"{self._what} (status)",
                ok=(204, 200),
            )
        except RegistryError as exc:
            raise UploadFailed(f"{self._what}: the upload cannot be resumed ({exc})") from exc
        async with resp:
            self._location = self._absolute(resp, resp.headers.get("Location") or self._location)
            offset = _offset_from_range(resp.headers.get("Range"))
        if offset is None or not low <= offset <= high:
            raise UploadFailed(
                f"{self._what}: the registry holds {offset} bytes, outside the chunk we can resend"
                f" ({low}-{high}); the upload cannot be resumed"
            )
        self.offset = offset


class _StreamingPatch:
    """A PATCH in flight whose body is fed block by block; keeps the blocks for a resend."""

    def __init__(self, upload: BlobUpload, *, stream: bool) -> None:
        self.pieces: list[bytes] = []
        self.size = 0
        self.reported: int | None = None
        self.streaming = stream
        # Unbounded, but never holds more than one chunk: the caller closes at chunk_size.
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task: asyncio.Task[int | None] | None = None
        if stream:
            self._task = asyncio.create_task(
                upload._stream_patch(self._body()), name="containerdisk-patch"
            )

    async def _body(self) -> AsyncIterator[bytes]:
        while (piece := await self._queue.get()) is not None:
            yield piece

    def feed(self, data: bytes) -> None:
        self.pieces.append(data)
        self.size += len(data)
        if self._task is not None:
            self._queue.put_nowait(data)

    async def close(self) -> None:
        assert self._task is not None
        self._queue.put_nowait(None)
        self.reported = await self._task

    async def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def upload_bytes(transport: Transport, ref: Reference, data: bytes, digest: str) -> bool:
    """Monolithic upload of an in-memory blob unless the repository has it; True if sent."""
    if await head_blob(transport, ref, digest, push=True) is not None:
        return False
    return await upload_monolithic(transport, ref, digest, len(data), lambda: data)


async def upload_monolithic(
    transport: Transport, ref: Reference, digest: str, size: int, body: Callable[[], Any]
) -> bool:
    """POST, then one ``PUT ?digest=`` whose body ``body()`` makes (again on a retry)."""
    what = f"upload of blob {digest[:19]} to {ref.registry}/{ref.repository}"
    upload = BlobUpload(transport, ref, what)
    await upload.start()
    resp = await transport.request(
        "PUT",
        ref,
        _with_query(upload.location, digest=digest),
        scope=push_scope(ref),
        what=what,
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        body=body,
        ok=(201, 204),
    )
    resp.release()
    return True


async def mount_blob(transport: Transport, ref: Reference, digest: str, from_repo: str) -> bool:
    """Cross-repository mount; True when the registry mounted it (else nothing was started)."""
    what = f"mount of blob {digest[:19]} from {from_repo} into {ref.repository}"
    upload = BlobUpload(transport, ref, what)
    mounted = await upload.start(mount=(digest, from_repo))
    if not mounted and upload._location is not None:
        async with translate_errors(what):
            # Abandon the session the registry opened instead of mounting.
            resp = await transport.request(
                "DELETE",
                ref,
                upload.location,
                scope=push_scope(ref),
                what=what,
                ok=(204, 200, 404),
                retry=False,
            )
            resp.release()
    return mounted


async def iterate_file(path: str, offset: int, size: int, piece: int) -> AsyncIterator[bytes]:
    """Read ``size`` bytes of a file from ``offset`` in a worker thread, piece by piece."""
    with open(path, "rb") as f:  # noqa: ASYNC230 - reads happen in to_thread below
        done = 0
        while done < size:
            n = min(piece, size - done)
            data = await asyncio.to_thread(_pread, f.fileno(), n, offset + done)
            if len(data) != n:
                raise UploadFailed(f"file {path} shrank while it was being uploaded")
            done += n
            yield data


def _pread(fd: int, n: int, offset: int) -> bytes:
    import os

    return os.pread(fd, n, offset)
