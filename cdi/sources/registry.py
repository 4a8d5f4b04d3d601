"""Registry source (``docker://host/repo:tag`` or ``@sha256:``) via the ``containerdisk`` client.

The disk file of a containerDisk (``disk/*`` in a layer) or of a disk artifact
streams in order with every blob's digest verified by ``containerdisk``. This
module is the one place that translates containerdisk's errors into ours. A
retry re-opens the image (pinned to the manifest digest seen first) and
resumes at the offset reached (``RegistryDisk.chunks(start)``), so the
decoder and the disk writes carry on instead of starting over.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

import containerdisk
from cdi.errors import (
    AuthFailed,
    ChecksumMismatch,
    FinalImportError,
    ImportError,
    InvalidRequest,
    SourceNotFound,
    SourceUnavailable,
    UnsafeImage,
)
from cdi.formats.detect import HEADER_BYTES
from cdi.request import Credentials, SourceSpec
from cdi.settings import ImportSettings
from cdi.sources.base import SourceInfo


class RegistrySource:
    """One image reference; the registry client lives from ``probe`` to ``aclose``."""

    def __init__(self, spec: SourceSpec, settings: ImportSettings) -> None:
        assert spec.url is not None
        try:
            self.reference = containerdisk.Reference.parse(spec.url)
        except containerdisk.ContainerDiskError as exc:
            raise InvalidRequest(f"{spec.url} is not a valid image reference") from exc
        self.description = str(self.reference)
        creds = spec.credentials or Credentials()
        basic = creds.basic()
        self._client = containerdisk.RegistryClient(
            username=basic[0] if basic else None,
            password=basic[1] if basic else None,
            token=creds.token,
            ca_file=spec.ca_file,
            insecure=spec.insecure_skip_verify,
            platform=f"linux/{spec.platform}" if spec.platform else None,
        )
        self._stack = contextlib.AsyncExitStack()
        self._entered = False
        self._pending: tuple[bytes, AsyncGenerator[bytes, None]] | None = None
        self._settings = settings
        self.manifest_digest: str | None = None

    async def _enter(self) -> None:
        if not self._entered:
            await self._stack.enter_async_context(self._client)
            self._entered = True

    async def resolve(self) -> str:
        """The image manifest digest (one manifest request; two through an index).

        Pins ``reference`` to it, so the disk read later is exactly that image.
        """
        with _translated(self.description):
            await self._enter()
            resolved = await self._client.resolve(self.reference)
        self.reference = resolved.reference
        self.manifest_digest = resolved.manifest_digest
        return resolved.manifest_digest

    async def _open(
        self, start: int = 0
    ) -> tuple[containerdisk.RegistryDisk, AsyncGenerator[bytes, None]]:
        await self._enter()
        disk = await self._stack.enter_async_context(self._client.open_disk(self.reference))
        self.reference = disk.reference.with_digest(disk.manifest_digest)  # pin for retries
        self.manifest_digest = disk.manifest_digest
        chunks = disk.chunks(start)
        self._stack.push_async_callback(chunks.aclose)
        return disk, chunks

    async def probe(self) -> SourceInfo:
        with _translated(self.description):
            disk, chunks = await self._open()
            head = bytearray()
            async for piece in chunks:
                head += piece
                if len(head) >= HEADER_BYTES:
                    break
        self._pending = (bytes(head), chunks)
        return SourceInfo(
            disk.size,
            False,
            f"digest:{disk.manifest_digest}",
            bytes(head[:HEADER_BYTES]),
            resumable=True,
        )

    async def revalidate(self, saved: SourceInfo) -> SourceInfo | None:
        """One manifest request: ``saved`` if the reference still names that image."""
        if saved.validator is None or not saved.validator.startswith("digest:"):
            return None
        digest = await self.resolve()
        return saved if f"digest:{digest}" == saved.validator else None

    async def stream(self, start: int, end: int | None) -> AsyncGenerator[bytes, None]:
        """The disk from ``start`` on (``end`` must be None: no random ranges).

        A later call re-opens the pinned image and resumes with
        ``RegistryDisk.chunks(start)``: segments of an artifact that end before
        ``start`` are not fetched again; a layer is re-read (and verified) from
        its start, but only the bytes from ``start`` on are handed over.
        """
        if end is not None:
            raise InvalidRequest(f"{self.description} cannot be read in ranges")
        with _translated(self.description):
            if self._pending is not None and start == 0:
                head, chunks = self._pending
                self._pending = None
            else:
                await self._drop_pending()
                _disk, chunks = await self._open(start)
                head = b""
            if head:
                yield head
            async for piece in chunks:
                yield piece

    async def _drop_pending(self) -> None:
        if self._pending is not None:
            _head, chunks = self._pending
            self._pending = None
            await chunks.aclose()

    async def aclose(self) -> None:
        await self._stack.aclose()


@contextlib.contextmanager
def _translated(what: str):  # type: ignore[no-untyped-def]
    try:
        yield
    except ImportError:
        raise
    except containerdisk.AuthenticationFailed as exc:
        raise AuthFailed(f"registry refused access to {what}; check the credentials") from exc
    except (containerdisk.NotFound, containerdisk.PlatformNotFound) as exc:
        raise SourceNotFound(f"{what} was not found in its registry: {exc}") from exc
    except containerdisk.RegistryUnavailable as exc:
        raise SourceUnavailable(f"registry of {what} is unavailable; will retry") from exc
    except containerdisk.DigestMismatch as exc:
        raise ChecksumMismatch(f"a blob of {what} does not match its digest") from exc
    except containerdisk.UnsafeLayer as exc:
        raise UnsafeImage(f"{what} was refused: {exc}") from exc
    except (containerdisk.InvalidReference, containerdisk.InsecureRegistryRefused) as exc:
        raise InvalidRequest(f"{what}: {exc}") from exc
    except containerdisk.ContainerDiskError as exc:
        raise FinalImportError(f"pulling {what} failed: {exc}") from exc
