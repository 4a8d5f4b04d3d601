"""A streaming, validating tar reader for containerDisk layers.

Nothing is ever extracted from a layer except the disk file's bytes, which the
caller writes where it chose; still, a hostile layer is refused outright, as
KubeVirt refuses it: entries with absolute paths or ``..``, links that leave
the tree, devices and FIFOs, oversized metadata headers, broken checksums, and
anything but exactly one regular file under ``disk/`` (or the explicit path).
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from containerdisk.errors import UnsafeLayer

BLOCK = 512
MAX_META_BYTES = 1024 * 1024  # PAX / GNU long-name headers larger than this are refused
_REGULAR = frozenset(b"0\x007")
_META = frozenset(b"LKxg")
_REFUSED_KINDS = {ord("3"): "character device", ord("4"): "block device", ord("6"): "FIFO"}


class ByteStream:
    """Exact-size reads over an async iterator of chunks, copying as little as it can."""

    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._source = source
        self._chunk = b""
        self._pos = 0
        self._eof = False

    async def _fill(self) -> bool:
        """Make bytes available; False at the end of the stream."""
        while self._pos >= len(self._chunk):
            if self._eof:
                return False
            try:
                self._chunk, self._pos = await anext(self._source), 0
            except StopAsyncIteration:
                self._eof = True
                return False
        return True

    def _take(self, n: int) -> bytes:
        take = min(n, len(self._chunk) - self._pos)
        if self._pos == 0 and take == len(self._chunk):
            piece = self._chunk
        else:
            piece = self._chunk[self._pos : self._pos + take]
        self._pos += take
        return piece

    async def read_exact(self, n: int, what: str) -> bytes:
        parts = [piece async for piece in self.pieces(n, what)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def pieces(self, n: int, what: str) -> AsyncGenerator[bytes, None]:
        """Yield exactly ``n`` bytes in the pieces they arrive in."""
        left = n
        while left:
            if not await self._fill():
                raise UnsafeLayer(f"layer ends inside {what}")
            piece = self._take(left)
            left -= len(piece)
            yield piece

    async def skip(self, n: int, what: str) -> None:
        async for _ in self.pieces(n, what):
            pass

    async def drain(self) -> None:
        self._chunk, self._pos = b"", 0
        while await self._fill():
            self._chunk, self._pos = b"", 0


@dataclass(frozen=True, slots=True)
class TarEntry:
    name: str
    kind: int
    size: int
    linkname: str
    mode: int
    uid: int
    gid: int

    @property
    def is_regular(self) -> bool:
        return self.kind in _REGULAR

    @property
    def is_dir(self) -> bool:
        return self.kind == ord("5")


def _number(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:  # base-256, GNU/star extension for big values
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        return value
    text = field.replace(b"\0", b" ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError as exc:
        raise UnsafeLayer(f"layer has a corrupt tar header ({what})") from exc


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _check_checksum(block: bytes) -> None:
    stored = _number(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = sum((b - 256 if b > 127 else b) for b in block[:148] + b" " * 8 + block[156:])
    if stored not in (unsigned, signed):
        raise UnsafeLayer("layer has a tar header with a wrong checksum")


def _parse_pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError as exc:
            raise UnsafeLayer("layer has a corrupt PAX header") from exc
        if length <= 0 or pos + length > len(data):
            raise UnsafeLayer("layer has a corrupt PAX header")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def safe_name(name: str) -> str:
    """The entry's normalized relative path; refuses absolute paths and ``..``."""
    if name.startswith("/"):
        raise UnsafeLayer(f"layer entry {name[:200]!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(f"layer entry {name[:200]!r} climbs out of the tree with '..'")
    return "/".join(parts)


def _check_link(entry: TarEntry, name: str) -> None:
    target = entry.linkname
    if target.startswith("/"):
        raise UnsafeLayer(f"layer entry {name!r} links to absolute path {target[:200]!r}")
    base = posixpath.dirname(name) if entry.kind == ord("2") else ""
    resolved = posixpath.normpath(posixpath.join(base, target)) if target else "."
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeLayer(f"layer entry {name!r} links out of the tree to {target[:200]!r}")


class DiskTarReader:
    """Walks a layer's tar stream: finds the disk entry, streams it, validates the rest."""

    def __init__(self, source: AsyncIterator[bytes], disk_path: str | None = None) -> None:
        self._bytes = ByteStream(source)
        self._disk_path = safe_name(disk_path) if disk_path else None
        self._ended = False
        self.disk: TarEntry | None = None
        self.disk_name: str | None = None

    def _is_disk(self, name: str) -> bool:
        if self._disk_path is not None:
            return name == self._disk_path
        parts = name.split("/")
        return len(parts) == 2 and parts[0] == "disk"

    async def _next_entry(self) -> tuple[str, TarEntry] | None:
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            block = await self._bytes.read_exact(BLOCK, "a tar header")
            if block == b"\0" * BLOCK:
                self._ended = True
                return None
            _check_checksum(block)
            kind = block[156]
            size = _number(block[124:136], "size")
            if kind in _META:
                if size > MAX_META_BYTES:
                    raise UnsafeLayer(f"layer has an oversized tar metadata header ({size} bytes)")
                data = await self._bytes.read_exact(size + (-size % BLOCK), "a tar header")
                data = data[:size]
                if kind == ord("x"):
                    pax = _parse_pax(data)
                elif kind == ord("L"):
                    long_name = _text(data)
                elif kind == ord("K"):
                    long_link = _text(data)
                continue  # 'g' (global) headers carry nothing we use
            name = _text(block[0:100])
            if block[257:262] == b"ustar" and block[345] != 0:
                name = _text(block[345:500]) + "/" + name
            name = pax.get("path", long_name or name)
            if "size" in pax:
                try:
                    size = int(pax["size"])
                except ValueError as exc:
                    raise UnsafeLayer("layer has a corrupt PAX size") from exc
            entry = TarEntry(
                name=name,
                kind=kind,
                size=size,
                linkname=pax.get("linkpath", long_link or _text(block[157:257])),
                mode=_number(block[100:108], "mode"),
                uid=int(pax.get("uid", _number(block[108:116], "uid"))),
                gid=int(pax.get("gid", _number(block[116:124], "gid"))),
            )
            return self._validate(entry), entry

    def _validate(self, entry: TarEntry) -> str:
        name = safe_name(entry.name)
        if entry.kind in _REFUSED_KINDS:
            raise UnsafeLayer(f"layer entry {name!r} is a {_REFUSED_KINDS[entry.kind]}")
        if entry.kind in (ord("1"), ord("2")):
            _check_link(entry, name)
        elif not entry.is_regular and not entry.is_dir:
            raise UnsafeLayer(f"layer entry {name!r} has unsupported tar type {chr(entry.kind)!r}")
        if self._is_disk(name) and not entry.is_regular:
            raise UnsafeLayer(f"layer entry {name!r} is not a regular file; the disk must be one")
        if entry.size < 0:
            raise UnsafeLayer(f"layer entry {name!r} has a negative size")
        return name

    async def _skip_data(self, entry: TarEntry) -> None:
        if entry.is_regular:
            await self._bytes.skip(entry.size + (-entry.size % BLOCK), "a file's data")

    async def find_disk(self) -> TarEntry | None:
        """Read up to the disk's header; None when the layer ends without one."""
        while not self._ended:
            found = await self._next_entry()
            if found is None:
                break
            name, entry = found
            if self._is_disk(name):
                self.disk, self.disk_name = entry, name
                return entry
            await self._skip_data(entry)
        await self._bytes.drain()
        return None

    async def disk_chunks(self) -> AsyncGenerator[bytes, None]:
        """The disk file's bytes, right after :meth:`find_disk` returned it."""
        if self.disk is None:
            raise UnsafeLayer("layer has no disk entry to read")
        pieces = self._bytes.pieces(self.disk.size, f"disk file {self.disk_name!r}")
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                yield piece
        await self._bytes.skip(-self.disk.size % BLOCK, "the disk's padding")

    async def finish(self) -> None:
        """Validate the entries after the disk and read the stream to its end."""
        while not self._ended:
            found = await self._next_entry()
            if found is None:
                break
            name, entry = found
            if self._is_disk(name):
                where = self._disk_path or "disk/"
                raise UnsafeLayer(
                    f"layer has two files under {where} ({self.disk_name!r} and {name!r});"
                    " a containerDisk holds exactly one"
                )
            await self._skip_data(entry)
        await self._bytes.drain()
