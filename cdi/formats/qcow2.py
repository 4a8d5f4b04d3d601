"""A native qcow2 reader: header, L1/L2 tables, and cluster extraction by host range.

The import fetches only the host ranges that hold allocated clusters (or the
whole file when a checksum needs every byte), in parallel, and turns each
fetched range into writes at guest offsets. Unallocated and zero clusters are
never written, so they stay holes. Features we do not implement are refused
with a message rather than imported wrongly.
"""

from __future__ import annotations

import bisect
import struct
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import zstandard

from cdi.errors import InvalidImage, UnsafeImage, UnsupportedFormat

RangeReader = Callable[[int, int], Awaitable[bytes]]

_L1_OFFSET_MASK = 0x00FFFFFFFFFFFE00
_L2_OFFSET_MASK = 0x00FFFFFFFFFFFE00
_COMPRESSED = 1 << 62
_ZERO = 1
_INCOMPAT_DIRTY = 1 << 0
_INCOMPAT_CORRUPT = 1 << 1
_INCOMPAT_DATA_FILE = 1 << 2
_INCOMPAT_COMPRESSION = 1 << 3
_INCOMPAT_EXTL2 = 1 << 4
_KNOWN_INCOMPAT = _INCOMPAT_DIRTY | _INCOMPAT_CORRUPT | _INCOMPAT_DATA_FILE
_KNOWN_INCOMPAT |= _INCOMPAT_COMPRESSION | _INCOMPAT_EXTL2
#: Refuse L1 tables bigger than this (a 64 MiB L1 maps 4 PiB at 64 KiB clusters).
MAX_L1_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Header:
    version: int
    cluster_bits: int
    virtual_size: int
    l1_size: int
    l1_offset: int
    compression: str  # "zlib" | "zstd"

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits


@dataclass(frozen=True)
class Cluster:
    """One allocated guest cluster: where its bytes are in the file and where they go."""

    host_offset: int
    length: int  # bytes in the file (compressed length for compressed clusters)
    guest_offset: int
    compressed: bool


def parse_header(head: bytes, what: str) -> Header:
    if len(head) < 72 or head[:4] != b"QFI\xfb":
        raise InvalidImage(f"{what} is too short to hold a qcow2 header")
    (version, backing_off, _bsize, cluster_bits, size, crypt, l1_size, l1_off) = struct.unpack(
        ">IQIIQIIQ", head[4:48]
    )
    if version not in (2, 3):
        raise UnsupportedFormat(f"{what} is qcow2 version {version}; only versions 2 and 3 work")
    if backing_off:
        raise UnsafeImage(f"{what} names a backing file; only self-contained images are imported")
    if crypt:
        raise UnsupportedFormat(f"{what} is an encrypted qcow2 image; encryption is not supported")
    if not 9 <= cluster_bits <= 21:
        raise InvalidImage(f"{what} has an invalid cluster size 2^{cluster_bits}")
    compression = "zlib"
    if version == 3:
        compression = _check_v3_features(head, what)
    if l1_size * 8 > MAX_L1_BYTES:
        raise InvalidImage(f"{what} has an L1 table of {l1_size} entries, larger than allowed")
    return Header(version, cluster_bits, size, l1_size, l1_off, compression)


def _check_v3_features(head: bytes, what: str) -> str:
    if len(head) < 104:
        raise InvalidImage(f"{what} is too short to hold a qcow2 v3 header")
    incompat, _compat, _autoclear, _refcount_order, header_len = struct.unpack(
        ">QQQII", head[72:104]
    )
    if incompat & _INCOMPAT_CORRUPT:
        raise InvalidImage(f"{what} is marked corrupt by QEMU")
    if incompat & _INCOMPAT_DATA_FILE:
        raise UnsafeImage(f"{what} keeps its data in an external data file; refused")
    if incompat & _INCOMPAT_EXTL2:
        raise UnsupportedFormat(f"{what} uses extended L2 entries (subclusters), not supported")
    if incompat & ~_KNOWN_INCOMPAT:
        raise UnsupportedFormat(f"{what} uses unknown incompatible qcow2 features {incompat:#x}")
    if incompat & _INCOMPAT_COMPRESSION and header_len > 104 and len(head) > 104:
        kind = head[104]
        if kind == 1:
            return "zstd"
        if kind != 0:
            raise UnsupportedFormat(f"{what} uses unknown compression type {kind}")
    return "zlib"


async def read_map(header: Header, file_size: int, read: RangeReader, what: str) -> list[Cluster]:
    """Read L1 and every L2 table; return allocated clusters sorted by host offset."""
    csize = header.cluster_size
    l1_bytes = header.l1_size * 8
    _check_inside(header.l1_offset, l1_bytes, file_size, "L1 table", what)
    l1 = await read(header.l1_offset, header.l1_offset + l1_bytes) if l1_bytes else b""
    entries_per_l2 = csize // 8
    clusters: list[Cluster] = []
    for index, (entry,) in enumerate(struct.iter_unpack(">Q", l1)):
        l2_offset = entry & _L1_OFFSET_MASK
        if not l2_offset:
            continue
        _check_inside(l2_offset, csize, file_size, "L2 table", what)
        table = await read(l2_offset, l2_offset + csize)
        base = index * entries_per_l2 * csize
        clusters.extend(_l2_clusters(header, table, base, file_size, what))
    clusters.sort(key=lambda c: c.host_offset)
    return clusters


def _l2_clusters(
    header: Header, table: bytes, base: int, file_size: int, what: str
) -> Iterator[Cluster]:
    csize = header.cluster_size
    shift = 62 - (header.cluster_bits - 8)
    offset_mask = (1 << shift) - 1
    sectors_mask = (1 << (header.cluster_bits - 8)) - 1
    for j, (entry,) in enumerate(struct.iter_unpack(">Q", table)):
        guest = base + j * csize
        if guest >= header.virtual_size or not entry:
            continue
        if entry & _COMPRESSED:
            host = entry & offset_mask
            sectors = ((entry >> shift) & sectors_mask) + 1
            length = min(sectors * 512 - (host & 511), file_size - host)
            _check_inside(host, 1, file_size, "compressed cluster", what)
            yield Cluster(host, length, guest, True)
            continue
        if entry & _ZERO:
            continue
        host = entry & _L2_OFFSET_MASK
        if host:
            length = min(csize, header.virtual_size - guest)
            _check_inside(host, length, file_size, "data cluster", what)
            yield Cluster(host, length, guest, False)


def _check_inside(offset: int, length: int, file_size: int, kind: str, what: str) -> None:
    if offset + length > file_size:
        raise InvalidImage(
            f"{what} is truncated: its {kind} at byte {offset} lies past the end of the "
            f"{file_size}-byte file"
        )


def plan_ranges(
    clusters: list[Cluster], file_size: int, chunk: int, whole_file: bool
) -> list[tuple[int, int]]:
    """Host byte ranges to fetch, about ``chunk`` long, never splitting a cluster."""
    if whole_file:
        return _split_whole(clusters, file_size, chunk)
    ranges: list[tuple[int, int]] = []
    start = end = -1
    for c in clusters:
        c_end = c.host_offset + c.length
        if start >= 0 and c.host_offset <= end + 64 * 1024 and c_end - start <= chunk:
            end = max(end, c_end)
            continue
        if start >= 0:
            ranges.append((start, end))
        start, end = c.host_offset, c_end
    if start >= 0:
        ranges.append((start, end))
    return ranges


def _split_whole(clusters: list[Cluster], file_size: int, chunk: int) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    start, i = 0, 0
    while start < file_size:
        end = min(start + chunk, file_size)
        while i < len(clusters) and clusters[i].host_offset < end:
            c_end = clusters[i].host_offset + clusters[i].length
            if c_end > end:
                end = min(c_end, file_size)
            i += 1
        ranges.append((start, end))
        start = end
    return ranges


def clusters_in(clusters: list[Cluster], start: int, end: int) -> list[Cluster]:
    """Clusters wholly inside the host range [start, end) (bisect on the sorted list)."""
    lo = bisect.bisect_left(clusters, start, key=lambda c: c.host_offset)
    hi = bisect.bisect_left(clusters, end, key=lambda c: c.host_offset)
    return [c for c in clusters[lo:hi] if c.host_offset + c.length <= end]


def write_range(
    header: Header,
    clusters: list[Cluster],
    start: int,
    data: bytearray,
    write: Callable[[int, memoryview | bytes | bytearray], int],
    what: str,
) -> int:
    """Write the clusters of the fetched host range ``[start, start + len(data))``
    at their guest offsets; return bytes written.

    Clusters contiguous in both host and guest order (what ``qemu-img`` makes)
    go down as one write of a view into ``data``: no per-cluster copy.
    """
    view = memoryview(data)
    written = 0
    host = guest = length = 0
    for c in clusters_in(clusters, start, start + len(data)):
        if (
            not c.compressed
            and length
            and c.host_offset == host + length
            and c.guest_offset == guest + length
        ):
            length += c.length
            continue
        if length:
            written += write(guest, view[host - start : host - start + length])
            length = 0
        if c.compressed:
            raw = data[c.host_offset - start : c.host_offset - start + c.length]
            written += write(c.guest_offset, cluster_bytes(header, c, raw, what))
        else:
            host, guest, length = c.host_offset, c.guest_offset, c.length
    if length:
        written += write(guest, view[host - start : host - start + length])
    return written


def cluster_bytes(header: Header, cluster: Cluster, raw: bytearray, what: str) -> bytes | bytearray:
    """The guest bytes of a cluster (decompressed when needed)."""
    if not cluster.compressed:
        return raw
    csize = header.cluster_size
    try:
        if header.compression == "zstd":
            data = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
        else:
            data = zlib.decompressobj(-12).decompress(raw, csize)
    except (zlib.error, zstandard.ZstdError) as exc:
        raise InvalidImage(
            f"{what}: compressed cluster at byte {cluster.host_offset} is corrupt: {exc}"
        ) from exc
    want = min(csize, header.virtual_size - cluster.guest_offset)
    if len(data) < want:
        raise InvalidImage(f"{what}: compressed cluster at byte {cluster.host_offset} is short")
    return data[:want]
