"""A gzip member decoder whose state can be saved, so a killed import of a ``.gz`` resumes.

Python's ``zlib`` objects cannot be saved. zlib itself can resume a deflate
stream at a block boundary given the bit offset and the 32 KiB of output
before it (``inflatePrime`` + ``inflateSetDictionary``; Mark Adler's zran
technique). This module drives the system's libz through ctypes: it inflates
with ``Z_BLOCK`` so every call stops at block boundaries, and when asked
(:meth:`GzipMember.want_checkpoint`) records the next boundary as a
:class:`GzipCheckpoint` (input offset, bits, window, output offset, CRC and
size so far). :meth:`GzipMember.resume` rebuilds a decoder from one.

The speed is zlib's (what ``zlib.decompressobj`` runs); ``Z_BLOCK`` adds one
Python step per deflate block (tens of KiB of output each).
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import functools
import zlib
from dataclasses import dataclass
from typing import Any

WINDOW = 32 * 1024
Z_OK, Z_STREAM_END, Z_BUF_ERROR, Z_BLOCK = 0, 1, -5, 5
_FTEXT, _FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 1, 2, 4, 8, 16
_OUT = 1024 * 1024  # output buffer per inflate call


class _ZStream(ctypes.Structure):
    _fields_ = [
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint),
        ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_ulong),
        ("reserved", ctypes.c_ulong),
    ]


@functools.cache
def _libz() -> Any:
    name = ctypes.util.find_library("z")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if lib is None or not hasattr(lib, "inflatePrime"):
        return None
    lib.zlibVersion.restype = ctypes.c_char_p
    stream = ctypes.POINTER(_ZStream)
    lib.inflateInit2_.argtypes = [stream, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.inflate.argtypes = [stream, ctypes.c_int]
    lib.inflateEnd.argtypes = [stream]
    lib.inflatePrime.argtypes = [stream, ctypes.c_int, ctypes.c_int]
    lib.inflateSetDictionary.argtypes = [stream, ctypes.c_char_p, ctypes.c_uint]
    return lib


def available() -> bool:
    """Whether libz with ``inflatePrime`` is there (Debian's zlib1g has it)."""
    return _libz() is not None


class GzipError(ValueError):
    """The gzip data is invalid (bad header, corrupt deflate data, CRC or size mismatch)."""


@dataclass(frozen=True)
class GzipCheckpoint:
    """Where a gzip member's deflate data can be resumed: at ``in_offset`` of the file."""

    in_offset: int  # first whole byte not yet consumed (absolute in the compressed file)
    bits: int  # bits of the byte before it still to be consumed (0-7)
    prime: int  # their value, for inflatePrime
    window: bytes  # the last <= 32 KiB of output, for inflateSetDictionary
    out_offset: int  # absolute output offset at the boundary
    crc: int  # CRC-32 of this member's output so far
    member_out: int  # this member's output bytes so far (ISIZE is its low 32 bits)

    def to_json(self) -> dict[str, object]:
        fields = dict(self.__dict__)
        fields["window"] = base64.b64encode(self.window).decode()
        return fields

    @classmethod
    def from_json(cls, data: object) -> GzipCheckpoint | None:
        if not isinstance(data, dict):
            return None
        try:
            ints = {k: int(data[k]) for k in ("in_offset", "bits", "prime", "out_offset")}
            ints |= {k: int(data[k]) for k in ("crc", "member_out")}
            window = base64.b64decode(str(data["window"]))
        except (KeyError, ValueError, TypeError):
            return None
        if not 0 <= ints["bits"] < 8 or len(window) > WINDOW:
            return None
        return cls(window=window, **ints)


class GzipMember:
    """``push`` one gzip member's bytes; output goes to ``sink``; leftover input is returned."""

    def __init__(self, in_offset: int = 0, out_offset: int = 0) -> None:
        self._lib = _libz()
        if self._lib is None:
            raise GzipError("libz with inflatePrime is not available")
        self._in = in_offset  # absolute offset of the next input byte we will see
        self._out = out_offset
        self._phase = "header"
        self._pending = bytearray()  # header or trailer bytes collected so far
        self._crc = 0
        self._member_out = 0
        self._window = b""
        self._want = False
        self.checkpoint: GzipCheckpoint | None = None
        self._stream = _ZStream()
        self._outbuf = ctypes.create_string_buffer(_OUT)
        self._live = False

    @classmethod
    def resume(cls, point: GzipCheckpoint) -> GzipMember:
        member = cls(point.in_offset, point.out_offset)
        member._crc, member._member_out, member._window = point.crc, point.member_out, point.window
        member._start_inflate()
        lib = member._lib
        if point.bits and lib.inflatePrime(ctypes.byref(member._stream), point.bits, point.prime):
            raise GzipError("zlib refused the saved bit offset")
        if point.window and lib.inflateSetDictionary(
            ctypes.byref(member._stream), point.window, len(point.window)
        ):
            raise GzipError("zlib refused the saved window")
        member._phase = "deflate"
        return member

    @property
    def eof(self) -> bool:
        return self._phase == "done"

    def want_checkpoint(self) -> None:
        """Record the next block boundary in :attr:`checkpoint`."""
        self._want = True

    def push(self, data: bytes, sink: Any) -> bytes:
        view = memoryview(data)
        while view and self._phase != "done":
            if self._phase == "header":
                view = self._header(view)
            elif self._phase == "deflate":
                view = self._inflate(view, sink)
            else:
                view = self._trailer(view)
        return bytes(view)

    def close(self) -> None:
        if self._live:
            self._lib.inflateEnd(ctypes.byref(self._stream))
            self._live = False

    def __del__(self) -> None:
        self.close()

    # Phases ---------------------------------------------------------------------------
    def _take(self, view: memoryview, n: int) -> memoryview:
        """Move up to ``n`` bytes from ``view`` into the pending buffer; the rest."""
        part = view[: max(0, n - len(self._pending))]
        self._pending += part
        self._in += len(part)
        return view[len(part) :]

    def _header(self, view: memoryview) -> memoryview:
        while len(self._pending) < (need := self._header_size()):
            if not view:
                return view
            view = self._take(view, need)
        self._pending.clear()
        self._start_inflate()
        self._phase = "deflate"
        return view

    def _header_size(self) -> int:
        """Bytes of header known so far to be needed (grows as optional fields appear)."""
        head = bytes(self._pending)
        if len(head) < 10:
            return 10
        if head[:3] != b"\x1f\x8b\x08":
            raise GzipError("not a gzip member (bad magic or method)")
        flags, size = head[3], 10
        if flags & _FEXTRA:
            if len(head) < size + 2:
                return size + 2
            size += 2 + int.from_bytes(head[size : size + 2], "little")
        for flag in (_FNAME, _FCOMMENT):
            if flags & flag:
                if len(head) <= size:
                    return size + 1
                end = head.find(b"\x00", size)
                if end < 0:
                    return len(head) + 1
                size = end + 1
        if flags & _FHCRC:
            size += 2
        return size

    def _start_inflate(self) -> None:
        lib = self._lib
        version = lib.zlibVersion()
        ret = lib.inflateInit2_(ctypes.byref(self._stream), -15, version, ctypes.sizeof(_ZStream))
        if ret != Z_OK:
            raise GzipError(f"zlib inflateInit2 failed ({ret})")
        self._live = True

    def _inflate(self, view: memoryview, sink: Any) -> memoryview:
        data = (
            view.obj if isinstance(view.obj, bytes) and len(view) == len(view.obj) else bytes(view)
        )
        src = ctypes.c_char_p(data)  # points into ``data``, which outlives the calls below
        stream = self._stream
        stream.next_in = ctypes.cast(src, ctypes.c_void_p)
        stream.avail_in = len(data)
        while True:
            stream.next_out = ctypes.cast(self._outbuf, ctypes.c_void_p)
            stream.avail_out = _OUT
            before_in = stream.avail_in
            ret = self._lib.inflate(ctypes.byref(stream), Z_BLOCK)
            if ret not in (Z_OK, Z_STREAM_END, Z_BUF_ERROR):
                msg = stream.msg.decode(errors="replace") if stream.msg else f"error {ret}"
                raise GzipError(f"deflate data is corrupt ({msg})")
            produced = _OUT - stream.avail_out
            self._in += before_in - stream.avail_in
            if produced:
                out = ctypes.string_at(self._outbuf, produced)
                self._crc = zlib.crc32(out, self._crc)
                self._member_out += produced
                self._out += produced
                self._window = (self._window + out)[-WINDOW:]
                sink(out)
            if ret == Z_STREAM_END:
                self.close()
                self._phase = "trailer"
                return view[len(data) - stream.avail_in :]
            at_boundary = bool(stream.data_type & 128) and not (stream.data_type & 64)
            if self._want and at_boundary:
                self._record(data, len(data) - stream.avail_in, stream.data_type & 7)
            if stream.avail_in == 0 and produced < _OUT:
                return view[len(view) :]
            if ret == Z_BUF_ERROR and not produced and before_in == stream.avail_in:
                return view[len(view) :]

    def _record(self, data: bytes, consumed: int, bits: int) -> None:
        prime = 0
        if bits:
            if consumed == 0:
                return  # the partial byte came in an earlier push: wait for the next boundary
            prime = data[consumed - 1] >> (8 - bits)
        self.checkpoint = GzipCheckpoint(
            self._in, bits, prime, self._window, self._out, self._crc, self._member_out
        )
        self._want = False

    def _trailer(self, view: memoryview) -> memoryview:
        view = self._take(view, 8)
        if len(self._pending) < 8:
            return view
        crc = int.from_bytes(self._pending[:4], "little")
        size = int.from_bytes(self._pending[4:8], "little")
        if crc != self._crc & 0xFFFFFFFF:
            raise GzipError("gzip member fails its CRC-32 check")
        if size != self._member_out & 0xFFFFFFFF:
            raise GzipError("gzip member's size does not match its trailer")
        self._pending.clear()
        self._phase = "done"
        return view
