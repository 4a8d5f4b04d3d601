"""Benchmark: the resumable decoders against the stdlib ones they replaced, in one run.

Not a test. Resume after a kill needs state that Python's ``zlib`` and
``hashlib`` objects cannot save, so the import drives libz
(``cdi/formats/inflate.py``) and libcrypto (``cdi/checksum.py``) through
ctypes instead. This prints what that costs, best of ``--runs``:

  gunzip: StreamDecompressor("gz") (ctypes, Z_BLOCK)  vs  zlib.decompressobj
  sha256: StreamHasher (ctypes SHA256_*)              vs  hashlib.sha256

    .venv/bin/python bench/resumable.py [--size 256Mi] [--runs 5]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import time
import zlib
from collections.abc import Callable

from cdi.checksum import Checksum, StreamHasher
from cdi.formats.compression import StreamDecompressor

MiB = 1 << 20
PIECE = 4 * MiB  # what the sequential transfer hands the decoder at a time


def best(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def disk_like(size: int) -> bytes:
    """Half incompressible, half zeros, in 64 KiB blocks: roughly a used disk."""
    block = 64 * 1024
    noise = os.urandom(size // 2)
    parts = []
    for offset in range(0, size // 2, block):
        parts += [noise[offset : offset + block], bytes(block)]
    return b"".join(parts)


def gunzip_ours(blob: bytes) -> None:
    dec = StreamDecompressor("gz", "bench", lambda _piece: None)
    for offset in range(0, len(blob), PIECE):
        dec.feed(blob[offset : offset + PIECE])
    dec.finish()


def gunzip_stdlib(blob: bytes) -> None:
    dec = zlib.decompressobj(wbits=47)
    for offset in range(0, len(blob), PIECE):
        dec.decompress(blob[offset : offset + PIECE], PIECE)
        while dec.unconsumed_tail:
            dec.decompress(dec.unconsumed_tail, PIECE)
    assert dec.eof


def hash_ours(data: memoryview) -> None:
    hasher = StreamHasher(Checksum("sha256", "0" * 64))
    for offset in range(0, len(data), PIECE):
        hasher.update(data[offset : offset + PIECE])
    hasher.actual()


def hash_stdlib(data: memoryview) -> None:
    hasher = hashlib.sha256()
    for offset in range(0, len(data), PIECE):
        hasher.update(data[offset : offset + PIECE])
    hasher.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256Mi", help="plain bytes per run (Mi)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    size = int(args.size.removesuffix("Mi")) * MiB
    plain = disk_like(size)
    blob = gzip.compress(plain, compresslevel=6)
    view = memoryview(bytearray(plain))  # writable, like the transfer's buffers
    rows = [
        (
            "gunzip",
            best(args.runs, lambda: gunzip_ours(blob)),
            best(args.runs, lambda: gunzip_stdlib(blob)),
        ),
        (
            "sha256",
            best(args.runs, lambda: hash_ours(view)),
            best(args.runs, lambda: hash_stdlib(view)),
        ),
    ]
    print(f"{size // MiB} MiB plain ({len(blob) // MiB} MiB gzip), best of {args.runs}")
    for name, ours, stdlib in rows:
        rate = size / MiB / ours
        ratio = ours / stdlib
        print(f"{name}: ours {ours:.3f} s ({rate:.0f} MiB/s), stdlib {stdlib:.3f} s", end="")
        print(f", ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
