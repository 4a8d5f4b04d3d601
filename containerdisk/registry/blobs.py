"""Blob and manifest operations of the OCI distribution API (read side and manifests).

Every byte that comes from a registry is checked against the digest that
names it while it streams; a mismatch is raised at the end of the blob.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp

from containerdisk import mediatypes as mt
from containerdisk.errors import (
    DigestMismatch,
    ManifestError,
    NotFound,
    RegistryError,
    RegistryUnavailable,
)
from containerdisk.oci import MAX_MANIFEST_BYTES, Descriptor, StreamDigest, sha256_digest
from containerdisk.reference import Reference
from containerdisk.registry.transport import Transport, read_capped, translate_errors

READ_PIECE = 1024 * 1024
log = logging.getLogger(__name__)
MAX_CONFIG_BYTES = 1024 * 1024


def pull_scope(ref: Reference) -> str:
    return f"repository:{ref.repository}:pull"


def push_scope(ref: Reference) -> str:
    return f"repository:{ref.repository}:pull,push"


async def get_manifest(
    transport: Transport, ref: Reference, selector: str | None = None
) -> tuple[bytes, str, str]:
    """(body, media type, digest) of a manifest; the digest is verified when pinned."""
    selector = selector or ref.selector
    what = (
        f"manifest {ref.registry}/{ref.repository}:{selector}"
        if not selector.startswith("sha256:")
        else f"manifest {ref.registry}/{ref.repository}@{selector}"
    )
    headers = {"Accept": ", ".join(mt.ACCEPT_MANIFESTS)}
    resp = await transport.request(
        "GET",
        ref,
        f"/v2/{ref.repository}/manifests/{selector}",
        scope=pull_scope(ref),
        what=what,
        headers=headers,
    )
    async with translate_errors(what), resp:
        body = await read_capped(resp, MAX_MANIFEST_BYTES)
        content_type = resp.headers.get("Content-Type", "")
        announced = resp.headers.get("Docker-Content-Digest")
    if len(body) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{what} is over the 4 MiB manifest limit")
    digest = sha256_digest(body)
    if selector.startswith("sha256:") and digest != selector:
        raise DigestMismatch(f"{what} has digest {digest}; the registry served other content")
    if announced and announced.startswith("sha256:") and announced != digest:
        raise DigestMismatch(f"{what} has digest {digest} but the registry announced {announced}")
    return body, content_type.split(";")[0].strip(), digest


async def head_blob(
    transport: Transport, ref: Reference, digest: str, *, push: bool = False
) -> int | None:
    """The blob's size when the repository has it, None when it does not."""
    what = f"blob {digest[:19]} in {ref.registry}/{ref.repository}"
    try:
        resp = await transport.request(
            "HEAD",
            ref,
            f"/v2/{ref.repository}/blobs/{digest}",
            scope=push_scope(ref) if push else pull_scope(ref),
            what=what,
        )
    except NotFound:
        return None
    async with resp:
        length = resp.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else 0


async def blob_chunks(
    transport: Transport, ref: Reference, desc: Descriptor, *, verify: bool = True
) -> AsyncIterator[bytes]:
    """The blob's bytes as they arrive; DigestMismatch at the end if they are not ``desc``.

    A download cut by a connection error continues with a Range request from the
    byte it stopped at (the digest keeps running), up to the retry budget.
    """
    what = f"blob {desc.digest} of {ref.registry}/{ref.repository}"
    seen = StreamDigest()
    cuts = 0
    while True:
        headers = {"Range": f"bytes={seen.size}-"} if seen.size else None
        resp = await transport.request(
            "GET",
            ref,
            f"/v2/{ref.repository}/blobs/{desc.digest}",
            scope=pull_scope(ref),
            what=what,
            headers=headers,
            ok=(200, 206),
        )
        async with resp:
            if seen.size and resp.status != 206:
                raise RegistryUnavailable(
                    f"{what}: download was cut and the registry cannot resume it (no Range support)"
                )
            try:
                async for piece in resp.content.iter_chunked(READ_PIECE):
                    seen.update(piece)
                    if seen.size > desc.size:
                        raise DigestMismatch(
                            f"{what} is longer than its descriptor's {desc.size} bytes"
                        )
                    yield piece
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                cuts += 1
                if cuts >= transport.settings.retry_attempts or seen.size >= desc.size:
                    async with translate_errors(what):
                        raise
                log.info(
                    "%s: download cut at %d bytes (%s); resuming",
                    what,
                    seen.size,
                    type(exc).__name__,
                )
                continue
        break
    if verify:
        seen.verify(desc.digest, what, desc.size)


async def get_small_blob(transport: Transport, ref: Reference, desc: Descriptor) -> bytes:
    """A config-sized blob, verified."""
    if desc.size > MAX_CONFIG_BYTES:
        raise ManifestError(f"config blob {desc.digest} is {desc.size} bytes, over the 1 MiB limit")
    return b"".join([piece async for piece in blob_chunks(transport, ref, desc)])


async def blob_range(
    transport: Transport, ref: Reference, digest: str, offset: int, length: int
) -> bytes:
    """``length`` bytes of a blob from ``offset`` (unverified: a range has no digest)."""
    what = f"range {offset}+{length} of blob {digest[:19]} in {ref.registry}/{ref.repository}"
    headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
    resp = await transport.request(
        "GET",
        ref,
        f"/v2/{ref.repository}/blobs/{digest}",
        scope=pull_scope(ref),
        what=what,
        headers=headers,
        ok=(200, 206),
    )
    async with translate_errors(what), resp:
        if resp.status == 200:
            raise RegistryError(f"{what}: the registry ignores Range requests")
        data = await resp.content.readexactly(length)
    return data


async def put_manifest(
    transport: Transport, ref: Reference, selector: str, body: bytes, media_type: str
) -> str:
    """Upload a manifest under a tag or digest; returns its digest."""
    digest = sha256_digest(body)
    what = f"manifest upload {ref.registry}/{ref.repository}:{selector}"
    resp = await transport.request(
        "PUT",
        ref,
        f"/v2/{ref.repository}/manifests/{selector}",
        scope=push_scope(ref),
        what=what,
        headers={"Content-Type": media_type},
        body=body,
        ok=(201, 200, 202),
    )
    async with resp:
        announced = resp.headers.get("Docker-Content-Digest")
    if announced and announced != digest:
        raise DigestMismatch(f"{what}: the registry stored digest {announced}, we sent {digest}")
    return digest
