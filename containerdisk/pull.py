"""Pull side: resolve a reference to one manifest, open its disk as a verified byte stream.

A containerDisk's disk comes out of its tar layer (validated entry by entry,
see :mod:`containerdisk.tarread`); an artifact's disk is its layer blob, or its
segments in order. Every blob's digest is checked as it streams; a mismatch
raises :class:`~containerdisk.errors.DigestMismatch` at the end of that blob,
after which the consumer must discard what it wrote.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from containerdisk import annotations as ann
from containerdisk import mediatypes as mt
from containerdisk.codecs import Compression, decompress, sniff
from containerdisk.diskinfo import check_stream_head
from containerdisk.errors import ManifestError, UnsafeLayer
from containerdisk.oci import Descriptor, Index, Manifest, Platform, parse_manifest
from containerdisk.reference import Reference
from containerdisk.registry.blobs import blob_chunks, blob_range, get_manifest
from containerdisk.registry.transport import Transport
from containerdisk.tarread import DiskTarReader

DiskKind = Literal["containerdisk", "artifact"]
_HEAD_BYTES = 512


@dataclass(frozen=True)
class ResolvedImage:
    """A reference resolved to one image manifest (through an index if there was one)."""

    reference: Reference  # pinned to the manifest digest
    manifest_digest: str
    manifest: Manifest
    index_digest: str | None = None


async def resolve(transport: Transport, ref: Reference, platform: Platform | None) -> ResolvedImage:
    body, content_type, digest = await get_manifest(transport, ref)
    what = f"manifest of {ref}"
    parsed = parse_manifest(body, content_type, what)
    index_digest = None
    if isinstance(parsed, Index):
        wanted = platform or Platform.host()
        desc = parsed.select(wanted)
        index_digest = digest
        body, content_type, digest = await get_manifest(transport, ref, desc.digest)
        parsed = parse_manifest(body, content_type, f"{what} for {wanted}")
        if isinstance(parsed, Index):
            raise ManifestError(f"{what}: an index inside an index is not supported")
    return ResolvedImage(ref.with_digest(digest), digest, parsed, index_digest)


@dataclass(frozen=True)
class _Segment:
    desc: Descriptor
    index: int
    offset: int
    size: int


def _artifact_segments(manifest: Manifest, what: str) -> tuple[list[_Segment], str, bool]:
    """The disk layers of an artifact in order, its format, and whether it is zstd."""
    parsed = [(d, mt.parse_disk_layer_type(d.media_type)) for d in manifest.layers]
    disk_layers = [(d, p) for d, p in parsed if p is not None]
    if not disk_layers:
        raise ManifestError(f"{what} is an artifact without disk layers")
    formats = {p[0] for _, p in disk_layers}
    zstd = {p[2] for _, p in disk_layers}
    if len(formats) != 1 or len(zstd) != 1:
        raise ManifestError(f"{what} mixes disk layer types")
    segments: list[_Segment] = []
    for position, (desc, (_, segmented, compressed)) in enumerate(disk_layers):
        if not segmented:
            if len(disk_layers) != 1:
                raise ManifestError(f"{what} has several unsegmented disk layers")
            size = int(desc.annotations.get(ann.SEGMENT_SIZE, 0)) or (
                None if compressed else desc.size
            )
            segments.append(_Segment(desc, 0, 0, size if size is not None else -1))
            break
        try:
            segments.append(
                _Segment(
                    desc,
                    int(desc.annotations[ann.SEGMENT_INDEX]),
                    int(desc.annotations[ann.SEGMENT_OFFSET]),
                    int(desc.annotations[ann.SEGMENT_SIZE]),
                )
            )
        except (KeyError, ValueError) as exc:
            raise ManifestError(f"{what}: segment {position} lacks index/offset/size") from exc
    if any(s.size < -1 or s.offset < 0 for s in segments):
        raise ManifestError(f"{what} has a segment with a negative size or offset")
    segments.sort(key=lambda s: s.index)
    expected = 0
    for seg in segments:
        if seg.size < 0 and len(segments) == 1:
            break
        if seg.offset != expected:
            raise ManifestError(
                f"{what}: segment {seg.index} starts at {seg.offset}, not {expected}"
            )
        expected += seg.size
    return segments, formats.pop(), zstd.pop()


@dataclass
class RegistryDisk:
    """An open disk in a registry; read it once with :meth:`chunks`.

    ``size`` is the disk file's size in bytes when known (tar header, artifact
    annotations, or an uncompressed blob), else None.
    """

    reference: Reference
    manifest_digest: str
    kind: DiskKind
    media_type: str
    size: int | None
    disk_format: str | None
    annotations: dict[str, str]
    _transport: Transport
    _segments: list[_Segment] = field(default_factory=list)
    _zstd: bool = False
    _reader: DiskTarReader | None = None
    _closers: list[AsyncIterator[bytes]] = field(default_factory=list)
    _consumed: bool = False

    @property
    def is_containerdisk(self) -> bool:
        return self.kind == "containerdisk"

    @property
    def supports_ranges(self) -> bool:
        """Uncompressed artifacts can be read at any offset with Range requests."""
        return (
            self.kind == "artifact" and not self._zstd and all(s.size >= 0 for s in self._segments)
        )

    async def chunks(self, start: int = 0) -> AsyncGenerator[bytes, None]:
        """The disk file's bytes from ``start`` on, in order; a bad blob raises at its end.

        ``start`` resumes an earlier read: segments of an artifact that end before it
        are not fetched again (they were verified by that read); anything else is
        streamed and verified from its beginning, and the bytes before ``start``
        dropped.
        """
        if self._consumed:
            raise UnsafeLayer(f"disk of {self.reference} was already read; open it again")
        self._consumed = True
        skipped = [s for s in self._segments if 0 <= s.offset + s.size <= start and s.size >= 0]
        position = sum(s.size for s in skipped)
        raw = self._raw_chunks(len(skipped))
        source = _checked_head(raw, f"disk of {self.reference}") if position == 0 else raw
        async with contextlib.aclosing(source):
            async for piece in source:
                end = position + len(piece)
                if end > start:
                    yield piece if position >= start else piece[start - position :]
                position = end

    async def _raw_chunks(self, first_segment: int = 0) -> AsyncGenerator[bytes, None]:
        if self._reader is not None:
            async with contextlib.aclosing(self._reader.disk_chunks()) as pieces:
                async for piece in pieces:
                    yield piece
            await self._reader.finish()
            return
        for seg in self._segments[first_segment:]:
            async with contextlib.aclosing(self._segment_chunks(seg)) as pieces:
                async for piece in pieces:
                    yield piece

    async def _segment_chunks(self, seg: _Segment) -> AsyncGenerator[bytes, None]:
        """One segment's bytes, verified (digest, and length against its annotation)."""
        source = blob_chunks(self._transport, self.reference, seg.desc)
        stream = decompress(source, "zstd" if self._zstd else "none")
        seen = 0
        try:
            async for piece in stream:
                seen += len(piece)
                if 0 <= seg.size < seen:
                    break
                yield piece
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            await source.aclose()  # type: ignore[attr-defined]
        if seg.size >= 0 and seen != seg.size:
            raise UnsafeLayer(
                f"disk of {self.reference}: segment {seg.index} does not hold the"
                f" {seg.size} bytes its annotation says; refused"
            )

    @property
    def _parallel_segments(self) -> list[_Segment]:
        """Segments that can be fetched at once (several, all of known size), else []."""
        if len(self._segments) > 1 and all(s.size >= 0 for s in self._segments):
            return list(self._segments)
        return []

    async def read_range(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of an uncompressed artifact (unverified)."""
        if not self.supports_ranges:
            raise UnsafeLayer(
                f"disk of {self.reference} is not an uncompressed artifact; ranged reads need one"
            )
        out = bytearray()
        for seg in self._segments:
            end = seg.offset + seg.size
            if end <= offset or seg.offset >= offset + length:
                continue
            lo = max(offset, seg.offset) - seg.offset
            hi = min(offset + length, end) - seg.offset
            out += await blob_range(self._transport, self.reference, seg.desc.digest, lo, hi - lo)
        return bytes(out)

    async def aclose(self) -> None:
        for gen in reversed(self._closers):
            with contextlib.suppress(Exception):
                await gen.aclose()  # type: ignore[attr-defined]
        self._closers.clear()


async def _checked_head(
    source: AsyncGenerator[bytes, None], what: str
) -> AsyncGenerator[bytes, None]:
    """Hold back the first 512 bytes until the qcow2 header check passed."""
    async with contextlib.aclosing(source):
        async for piece in _held_head(source, what):
            yield piece


async def _held_head(source: AsyncIterator[bytes], what: str) -> AsyncIterator[bytes]:
    head = bytearray()
    checked = False
    async for piece in source:
        if checked:
            yield piece
            continue
        head += piece
        if len(head) >= _HEAD_BYTES:
            check_stream_head(bytes(head), what)
            checked = True
            yield bytes(head)
    if not checked and head:
        check_stream_head(bytes(head), what)
        yield bytes(head)


def _tar_layers(manifest: Manifest) -> list[Descriptor]:
    layers = [
        d for d in manifest.layers if d.media_type in mt.TAR_LAYER_TYPES or "tar" in d.media_type
    ]
    return list(reversed(layers))  # the last layer that has the disk wins


async def _open_layer(
    transport: Transport, image: ResolvedImage, desc: Descriptor, disk_path: str | None
) -> tuple[DiskTarReader, list[AsyncIterator[bytes]]]:
    source = blob_chunks(transport, image.reference, desc)
    declared = mt.layer_compression(desc.media_type)
    first = await anext(source, b"")
    compression: Compression = sniff(first) if declared is None else declared

    async def replay() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for piece in source:
            yield piece

    stream = decompress(replay(), compression)
    return DiskTarReader(stream, disk_path), [source, stream]


async def open_disk(
    transport: Transport, ref: Reference, platform: Platform | None, disk_path: str | None
) -> RegistryDisk:
    """Resolve ``ref`` and position a stream at the start of its disk."""
    image = await resolve(transport, ref, platform)
    manifest = image.manifest
    what = f"image {image.reference}"
    labels = dict(manifest.annotations)
    if manifest.artifact_type == mt.DISK_ARTIFACT_TYPE or any(
        mt.parse_disk_layer_type(d.media_type) for d in manifest.layers
    ):
        segments, disk_format, zstd = _artifact_segments(manifest, what)
        size_text = labels.get(ann.DISK_SIZE)
        known = all(s.size >= 0 for s in segments)
        size = int(size_text) if size_text else (sum(s.size for s in segments) if known else None)
        return RegistryDisk(
            image.reference,
            image.manifest_digest,
            "artifact",
            segments[0].desc.media_type,
            size,
            disk_format,
            labels,
            transport,
            _segments=segments,
            _zstd=zstd,
        )
    for desc in _tar_layers(manifest):
        reader, closers = await _open_layer(transport, image, desc, disk_path)
        try:
            entry = await reader.find_disk()
        except BaseException:
            for gen in reversed(closers):
                with contextlib.suppress(Exception):
                    await gen.aclose()  # type: ignore[attr-defined]
            raise
        if entry is None:
            for gen in reversed(closers):
                await gen.aclose()  # type: ignore[attr-defined]
            continue
        return RegistryDisk(
            image.reference,
            image.manifest_digest,
            "containerdisk",
            desc.media_type,
            entry.size,
            labels.get(ann.DISK_FORMAT),
            labels,
            transport,
            _reader=reader,
            _closers=closers,
        )
    where = disk_path or "disk/"
    raise UnsafeLayer(f"{what} has no file under {where}; it is not a containerDisk")
