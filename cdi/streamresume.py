"""Resuming a sequential import after a kill: the ``stream`` journal plan.

A sequential import (registry disks, gzip files, sources of unknown size)
decodes one stream in order. It can continue after a kill when its source
continues at an offset (Range, or a registry disk) and the decoder's state
at that offset can be saved:

- uncompressed inside (raw, qcow2, ...): the state is the offset itself;
- one gzip layer: a deflate block boundary (``cdi/formats/inflate.py``):
  source offset, bit offset, the 32 KiB window, output offset, CRC so far;
- a checksum: the hash state at the same offset (``cdi/checksum.py``).
  With gzip the hash runs ahead of the last block boundary, so a
  checksummed gzip import is not journalled. Other compressions (xz, zst,
  bz2) and nested layers are not journalled either.

The checkpoint runs on the decode thread between feeds (after the hash saw
the same bytes): it flushes and fdatasyncs the target, then saves the
journal, so what it records is on disk. The target is the volume's partial
disk for raw, else the scratch copy (which a journal keeps across Ctrl-C).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from cdi.checksum import StreamHasher
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
    compression = detect_compression(info.head)
    if compression == "gz":
        return hasher is None and inflate.available()
    return compression is None and (hasher is None or hasher.resumable)


@dataclass(frozen=True)
class ResumePoint:
    """Where a journalled stream continues: source offset, inner format, gzip state."""

    start: int
    inner: Format
    gzip: inflate.GzipCheckpoint | None = None


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
        inner = decoder.get("inner")
        if gzip is None or gzip.in_offset != start or inner not in get_args(Format):
            return None
    else:
        inner = detect_format(info.head)
    point = ResumePoint(start, inner, gzip)  # type: ignore[arg-type]  # checked above
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


def checkpointing(
    feed: Callable[[bytes], int],
    chain: Callable[[], DecodeChain],
    journal: Journal,
    hasher: StreamHasher | None,
    settings: ImportSettings,
) -> Callable[[bytes], int]:
    """``feed`` that also journals a resume point every ``journal_interval``."""
    last = time.monotonic()

    def feed_and_checkpoint(data: bytes) -> int:
        nonlocal last
        written = feed(data)
        current = chain()
        due = time.monotonic() - last >= settings.journal_interval
        if due and current.target is not None and _checkpoint(current, journal, hasher):
            last = time.monotonic()
        return written

    return feed_and_checkpoint


def _checkpoint(chain: DecodeChain, journal: Journal, hasher: StreamHasher | None) -> bool:
    """Save a resume point if the chain has one now; False to try again on the next feed."""
    assert chain.target is not None
    decoder: dict[str, object] = {"inner": chain.inner_format}
    if not chain.layers:
        start = chain.target.checkpoint()
    elif chain.layers == ["gz"] and chain.decompressors[0].checkpointable:
        dec = chain.decompressors[0]
        point = dec.take_checkpoint()
        if point is None:
            dec.want_checkpoint()  # recorded at the next deflate block boundary
            return False
        chain.target.checkpoint()  # everything up to point.out_offset (and past) is on disk
        start, decoder["gzip"] = point.in_offset, point.to_json()
    else:
        return True  # nothing to save for this chain; do not ask again every feed
    journal.done = [(0, start)]
    journal.hash = hasher.snapshot() if hasher is not None else None
    journal.decoder = decoder
    journal.save()
    return True
