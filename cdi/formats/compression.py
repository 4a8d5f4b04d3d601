"""Push-mode decompressors for gz, xz, zst and bz2 with bounded output pieces.

Output goes to a sink in pieces of at most ``PIECE`` bytes, so a small
compressed input that expands enormously (a "bomb") never sits in memory: the
sink (the writer) refuses it once it passes the volume's usable size.
Concatenated streams (multi-member gzip, several zstd frames) are joined.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable
from typing import Protocol

import zstandard

from cdi.errors import InvalidImage
from cdi.formats import inflate
from cdi.formats.detect import Compression
from cdi.settings import MiB

PIECE = 4 * MiB
_DECODE_ERRORS = (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error, zstandard.ZstdError)
Sink = Callable[[bytes], None]


class _Engine(Protocol):
    def push(self, data: bytes, sink: Sink) -> bytes:
        """Decompress ``data``; return input left over after the end of this stream."""

    @property
    def eof(self) -> bool: ...


class _StdlibEngine:
    """zlib / lzma / bz2 share the max_length + needs_input protocol (zlib differs a bit)."""

    def __init__(self, kind: Compression) -> None:
        self._kind = kind
        self._zlib = zlib.decompressobj(wbits=47) if kind == "gz" else None
        self._other = lzma.LZMADecompressor() if kind == "xz" else bz2.BZ2Decompressor()

    @property
    def eof(self) -> bool:
        return self._zlib.eof if self._zlib is not None else self._other.eof

    def push(self, data: bytes, sink: Sink) -> bytes:
        if self._zlib is not None:
            obj = self._zlib
            out = obj.decompress(data, PIECE)
            while True:
                if out:
                    sink(out)
                if obj.eof or not obj.unconsumed_tail:
                    break
                out = obj.decompress(obj.unconsumed_tail, PIECE)
            return obj.unused_data if obj.eof else b""
        other = self._other
        out = other.decompress(data, PIECE)
        while True:
            if out:
                sink(out)
            if other.eof or other.needs_input:
                break
            out = other.decompress(b"", PIECE)
        return other.unused_data if other.eof else b""


class _ZstdEngine:
    class _Writer:
        def __init__(self) -> None:
            self.sink: Sink = lambda _data: None

        def write(self, data: bytes) -> int:
            self.sink(bytes(data))
            return len(data)

    def __init__(self) -> None:
        self._writer = self._Writer()
        self._stream = zstandard.ZstdDecompressor().stream_writer(
            self._writer,  # type: ignore[arg-type]  # duck-typed writer is all it needs
            write_size=PIECE,
            write_return_read=True,
        )
        self._fed = False

    @property
    def eof(self) -> bool:
        # stream_writer joins frames itself; completeness is checked by the reader.
        return self._fed

    def push(self, data: bytes, sink: Sink) -> bytes:
        self._writer.sink = sink
        self._stream.write(data)
        self._fed = True
        return b""


def _engine(kind: Compression, consumed: int, produced: int) -> _Engine:
    if kind == "gz" and inflate.available():
        return inflate.GzipMember(consumed, produced)  # same zlib, and it can checkpoint
    return _ZstdEngine() if kind == "zst" else _StdlibEngine(kind)


class StreamDecompressor:
    """``feed`` compressed chunks; decompressed pieces go to ``sink`` as they appear.

    gz streams can checkpoint (``want_checkpoint`` / ``checkpoint``) and be
    rebuilt from one (``resumed``): see ``cdi/formats/inflate.py``.
    """

    def __init__(self, kind: Compression, what: str, sink: Sink) -> None:
        self.kind = kind
        self._what = what
        self._sink = sink
        self.consumed = 0  # compressed bytes taken, over all members
        self.produced = 0
        self._engine = _engine(kind, 0, 0)

    @classmethod
    def resumed(cls, what: str, sink: Sink, point: inflate.GzipCheckpoint) -> StreamDecompressor:
        dec = cls("gz", what, sink)
        dec.consumed, dec.produced = point.in_offset, point.out_offset
        dec._engine = inflate.GzipMember.resume(point)
        return dec

    @property
    def checkpointable(self) -> bool:
        return isinstance(self._engine, inflate.GzipMember)

    def want_checkpoint(self) -> None:
        if isinstance(self._engine, inflate.GzipMember):
            self._engine.want_checkpoint()

    def take_checkpoint(self) -> inflate.GzipCheckpoint | None:
        """The boundary recorded since ``want_checkpoint``, if any (then forgotten)."""
        if not isinstance(self._engine, inflate.GzipMember):
            return None
        point, self._engine.checkpoint = self._engine.checkpoint, None
        return point

    def _counted(self, data: bytes) -> None:
        self.produced += len(data)
        self._sink(data)

    def feed(self, data: bytes) -> None:
        try:
            while data:
                if self._engine.eof and self.kind != "zst":
                    if not data.strip(b"\x00"):
                        return  # trailing padding after the last member
                    self._engine = _engine(self.kind, self.consumed, self.produced)
                left = self._engine.push(data, self._counted)
                self.consumed += len(data) - len(left)
                data = left
        except (
            OSError,
            EOFError,
            ValueError,
            lzma.LZMAError,
            zlib.error,
            zstandard.ZstdError,
        ) as exc:
            raise InvalidImage(f"{self._what} is not valid {self.kind} data: {exc}") from exc

    def finish(self) -> None:
        """Raise when the input ended in the middle of a compressed stream."""
        if not self._engine.eof:
            raise InvalidImage(f"{self._what} ends in the middle of its {self.kind} stream")
