"""Resuming a sequential import after a kill: the ``stream`` journal plan.

A sequential import (registry disks, gzip files, sources of unknown size)
decodes one stream in order. It can continue after a kill when its source
continues at an offset (Range, or a registry disk) and the decoder's state
at that offset can be saved:

- uncompressed inside (raw, qcow2, ...): the state is the offset itself;
- one gzip layer: a deflate block boundary (``cdi/formats/inflate.py``):
  source offset, bit offset, the 32 KiB window, output offset, CRC so far;
- a checksum: the hash state at the same offset (``cdi/checksum.py``; with
  gzip, at the start of the chunk holding the boundary, see ``Checkpointing``).
  Other compressions (xz, zst, bz2) and nested layers are not journalled.

The checkpoint runs on the decode thread between feeds: it flushes and
fdatasyncs the target, then saves the journal, so what it records is on disk.
The target is the volume's partial disk for raw, else the scratch copy
(which a journal keeps across Ctrl-C).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from cdi.checksum import HashState, StreamHasher
from cdi.decode import DecodeChain, OffsetWriter
from cdi.formats import inflate
from cdi.formats.detect import HEADER_BYTES, Format, detect_compression, detect_format
from cdi.journal import Journal
from cdi.settings import ImportSettings
from cdi.sources.base import SourceInfo
from cdi.volumes import Volume

SCRATCH = "scratch.img"
PLAN = "stream"


def journalled(info: SourceInfo, hasher: StreamHasher | None) -> bool:
    """Whether this stream gets a ``stream`` journal (see the module docstring)."""
    if not (info.resumable or info.supports_ranges) or info.validator is None:
        return False
    if hasher is not None and not hasher.resumable:
        return False
    compression = detect_compression(info.head)
    return compression is None or (compression == "gz" and inflate.available())


@dataclass(frozen=True)
class ResumePoint:
    """Where a journalled stream continues: source offset, inner format, gzip state."""

    start: int
    inner: Format
    gzip: inflate.GzipCheckpoint | None = None
    skip: int = 0  # source bytes from ``start`` to the gzip boundary: hashed, not decoded


def resume_point(
    journal: Journal, info: SourceInfo, hasher: StreamHasher | None, volume: Volume
) -> ResumePoint | None:
    """The point a matching journal records, if its target and states are all usable."""
    if not journal.done or journal.done[0][0] != 0:
        return None
    start, decoder = journal.done[0][1], journal.decoder or {}
    gzip = None
    if detect_compression(info.head) == "gz":
        gzip = inflate.GzipCheckpoint.from_json(decoder.get("gzip"))
        inner, skip = decoder.get("inner"), decoder.get("skip", 0)
        if gzip is None or inner not in get_args(Format) or not isinstance(skip, int):
            return None
        if gzip.in_offset != start + skip:
            return None
    else:
        inner, skip = detect_format(info.head), 0
    point = ResumePoint(start, inner, gzip, skip)  # type: ignore[arg-type]  # checked above
    if not volume.is_block() and not target_path(volume, point.inner).exists():
        return None
    if hasher is not None:  # the hash must stand exactly at the offset we continue from
        saved = journal.hash
        if saved is None or saved.bytes_hashed != start or not hasher.restore(saved):
            return None
    return point


def target_path(volume: Volume, inner: Format) -> Path:
    return volume.partial_path if inner in ("raw", "iso") else volume.workdir / SCRATCH


def resumed_chain(
    what: str, info: SourceInfo, point: ResumePoint, target: OffsetWriter
) -> DecodeChain:
    """A chain that carries on at ``point``; ``target`` already holds what came before."""
    if point.gzip is None:
        return DecodeChain.resumed(what, point.inner, info.head, target)
    inner_head = os.pread(target.writer.fd, HEADER_BYTES, 0)  # written and synced before
    return DecodeChain.resumed_gzip(what, point.inner, inner_head, target, point.gzip)


def target_offset(point: ResumePoint) -> int:
    """Where the resumed target continues writing."""
    return point.gzip.out_offset if point.gzip is not None else point.start


class Checkpointing:
    """The stream's handler when journalled: hashes, feeds, and saves a resume point
    every ``journal_interval`` (the import's hasher is fed here, not by the transfer).

    For gzip with a checksum the boundary lies inside the chunk just fed, while
    the hash has seen the whole chunk; so the hash state *before* the chunk is
    saved with the chunk's start as the source offset, and ``skip`` (bytes from
    there to the boundary) tells the rerun what to hash without decoding again.
    """

    def __init__(
        self,
        feed: Callable[[bytes], int],
        chain: Callable[[], DecodeChain],
        journal: Journal,
        hasher: StreamHasher | None,
        settings: ImportSettings,
        point: ResumePoint | None,
    ) -> None:
        self._feed, self._chain, self._journal = feed, chain, journal
        self._hasher, self._interval = hasher, settings.journal_interval
        self._position = point.start if point is not None else 0
        self._skip = point.skip if point is not None else 0
        self._last = time.monotonic()

    def __call__(self, data: bytes) -> int:
        chunk_start = self._position
        self._position += len(data)
        before = self._hasher.snapshot() if self._hasher is not None else None
        if self._hasher is not None:
            self._hasher.update(data)
        if self._skip:  # a resumed gzip: these bytes were decoded before the kill
            cut = min(self._skip, len(data))
            data, self._skip = data[cut:], self._skip - cut
        written = self._feed(data) if data else 0
        chain = self._chain()
        due = time.monotonic() - self._last >= self._interval
        if due and chain.target is not None and self._checkpoint(chain, chunk_start, before):
            self._last = time.monotonic()
        return written

    def _checkpoint(self, chain: DecodeChain, chunk_start: int, before: HashState | None) -> bool:
        """Save a resume point if the chain has one now; False to try on the next feed."""
        assert chain.target is not None
        decoder: dict[str, object] = {"inner": chain.inner_format}
        hashed = self._hasher.snapshot() if self._hasher is not None else None
        if not chain.layers:
            start = chain.target.checkpoint()
        elif chain.layers == ["gz"] and chain.decompressors[0].checkpointable:
            dec = chain.decompressors[0]
            point = dec.take_checkpoint()
            if point is None or point.in_offset < chunk_start:
                dec.want_checkpoint()  # recorded at the next deflate block boundary
                return False
            chain.target.checkpoint()  # everything up to point.out_offset (and past) is on disk
            decoder["gzip"] = point.to_json()
            start = point.in_offset
            if self._hasher is not None:
                start, hashed = chunk_start, before
                decoder["skip"] = point.in_offset - chunk_start
        else:
            return True  # nothing to save for this chain; do not ask again every feed
        self._journal.done = [(0, start)]
        self._journal.hash = hashed
        self._journal.decoder = decoder
        self._journal.save()
        return True
