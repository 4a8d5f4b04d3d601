"""The sequential decode chain: decompress layer by layer, sniff, then write in order.

``source bytes -> [decompress -> sniff]* -> raw disk`` or, when the innermost
format needs random access (qcow2, vmdk, ...), ``-> scratch file`` for a second
stage. All of it is blocking and runs on the import's thread pool.
"""

from __future__ import annotations

from collections.abc import Callable

from cdi.errors import UnsupportedFormat
from cdi.formats.compression import StreamDecompressor
from cdi.formats.detect import HEADER_BYTES, Format, detect_compression, detect_format
from cdi.formats.inflate import GzipCheckpoint
from cdi.writer import BLOCK, RawWriter


class OffsetWriter:
    """Writes a stream at increasing offsets through a sparse-aware ``RawWriter``."""

    def __init__(self, writer: RawWriter, offset: int = 0) -> None:
        self.writer = writer
        self.offset = offset  # bytes received (``offset``: already on disk from an earlier run)
        self.written = 0
        self._pending = bytearray()  # keeps writes block-aligned so zero blocks are found

    def feed(self, data: bytes) -> None:
        self._pending += data
        self.offset += len(data)
        whole = len(self._pending) // BLOCK * BLOCK
        if whole >= 4 * BLOCK:
            start = self.offset - len(self._pending)
            self.written += self.writer.write(start, self._pending[:whole])
            del self._pending[:whole]

    def flush(self) -> None:
        if self._pending:
            start = self.offset - len(self._pending)
            self.written += self.writer.write(start, self._pending)
            self._pending.clear()

    def checkpoint(self) -> int:
        """Write and fdatasync everything received; the offset now durable."""
        self.flush()
        self.writer.datasync()
        return self.offset


class DecodeChain:
    """Peels compression layers off a stream and routes the inner image.

    ``open_target(format, head)`` is called once the innermost format is known
    and returns the writer for it (the volume for raw, a scratch file else).
    """

    MAX_LAYERS = 3

    def __init__(
        self,
        what: str,
        open_target: Callable[[Format, bytes], OffsetWriter],
    ) -> None:
        self._what = what
        self._open_target = open_target
        self.inner_format: Format | None = None
        self.inner_head = b""
        self.target: OffsetWriter | None = None
        self.layers: list[str] = []
        self._flushes: list[Callable[[], None]] = []
        self._entry: Callable[[bytes], None] = self._sniffer(0)
        self._decompressors: list[StreamDecompressor] = []

    @classmethod
    def resumed(cls, what: str, fmt: Format, head: bytes, target: OffsetWriter) -> DecodeChain:
        """A chain that carries on an uncompressed stream ``target`` already holds a prefix of."""
        chain = cls(what, lambda _fmt, _head: target)
        chain.inner_format, chain.inner_head, chain.target = fmt, head, target
        chain._entry, chain._flushes = target.feed, []
        return chain

    @classmethod
    def resumed_gzip(
        cls,
        what: str,
        fmt: Format,
        head: bytes,
        target: OffsetWriter,
        point: GzipCheckpoint,
    ) -> DecodeChain:
        """A chain that carries on one gzip layer from a saved deflate block boundary."""
        chain = cls.resumed(what, fmt, head, target)
        dec = StreamDecompressor.resumed(what, target.feed, point)
        chain.layers, chain._decompressors, chain._entry = ["gz"], [dec], dec.feed
        return chain

    @property
    def decompressors(self) -> list[StreamDecompressor]:
        """The decompressors, outermost first."""
        return self._decompressors

    def feed(self, data: bytes) -> int:
        before = self.target.written if self.target else 0
        self._entry(data)
        return (self.target.written if self.target else 0) - before

    def finish(self) -> int:
        """Flush a short head (inputs under 64 KiB) and check streams ended cleanly."""
        before = self.target.written if self.target else 0
        index = 0
        while index < len(self._flushes):  # inner sniffers appear while outer ones flush
            self._flushes[index]()
            index += 1
        for dec in self._decompressors:
            dec.finish()
        if self.target is not None:
            self.target.flush()
        return (self.target.written if self.target else 0) - before

    def _sniffer(self, depth: int) -> Callable[[bytes], None]:
        head = bytearray()
        downstream: list[Callable[[bytes], None]] = []

        def decide() -> None:
            kind = detect_compression(bytes(head))
            if kind is not None:
                if depth >= self.MAX_LAYERS:
                    raise UnsupportedFormat(f"{self._what} nests more than 3 compression layers")
                self.layers.append(kind)
                inner = self._sniffer(depth + 1)
                dec = StreamDecompressor(kind, self._what, inner)
                self._decompressors.append(dec)
                downstream.append(dec.feed)
            else:
                fmt = detect_format(bytes(head))
                self.inner_format, self.inner_head = fmt, bytes(head)
                self.target = self._open_target(fmt, bytes(head))
                downstream.append(self.target.feed)
            downstream[0](bytes(head))
            head.clear()

        def feed(data: bytes) -> None:
            if downstream:
                downstream[0](data)
                return
            head.extend(data)
            if len(head) >= HEADER_BYTES:
                decide()

        def flush() -> None:
            if not downstream:
                decide()

        self._flushes.append(flush)
        return feed
