"""Stream a disk into a blob: one read of the disk, digests and compression inline.

Blocks of :data:`BLOCK_SIZE` are read and compressed in worker threads (an
independent gzip member / zstd frame each, see :mod:`containerdisk.codecs`),
at most :data:`IN_FLIGHT` at a time so memory stays bounded; results are
taken in order, hashed (disk sha256, uncompressed tar sha256 = diff_id,
compressed sha256 = blob digest) and handed to the sink (a registry upload
or a file in an OCI layout).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from containerdisk.codecs import Compression, compress_block
from containerdisk.errors import BuildError
from containerdisk.tarbuild import disk_tar_head, disk_tar_tail

BLOCK_SIZE = 4 * 1024 * 1024
IN_FLIGHT = 6
COMPRESS_THREADS = max(1, min(4, os.cpu_count() or 1))

Sink = Callable[[bytes], Awaitable[None]]
Progress = Callable[[str, int, int | None], None]


@dataclass(frozen=True, slots=True)
class BlobResult:
    digest: str  # of the blob as stored
    size: int
    diff_id: str  # of the uncompressed stream (the tar for a containerDisk)
    disk_sha256: str  # sha256:<hex> of the disk file alone
    disk_size: int


def _read_block(
    fd: int, offset: int, n: int, prefix: bytes, suffix: bytes, compression: Compression
) -> tuple[bytes, bytes]:
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise BuildError("the disk file changed size while it was being read")
    plain = prefix + data + suffix if (prefix or suffix) else data
    return data, compress_block(compression, plain)


class _Hashes:
    def __init__(self) -> None:
        self.disk = hashlib.sha256()
        self.plain = hashlib.sha256()
        self.blob = hashlib.sha256()
        self.blob_size = 0

    def update(
        self, prefix: bytes, data: bytes, suffix: bytes, blob: bytes, compressed: bool, framed: bool
    ) -> None:
        self.disk.update(data)
        if framed:
            self.plain.update(prefix)
            self.plain.update(data)
            self.plain.update(suffix)
        if compressed or framed:
            self.blob.update(blob)
        self.blob_size += len(blob)


async def stream_disk_blob(
    path: Path,
    *,
    compression: Compression,
    tar: bool,
    sink: Sink,
    progress: Progress | None = None,
    tar_name: str | None = None,
    phase: str = "upload",
) -> BlobResult:
    """Read ``path`` once into ``sink`` as a (tar-framed, compressed) blob."""
    size = (await asyncio.to_thread(path.stat)).st_size
    head = (disk_tar_head(size, name=tar_name) if tar_name else disk_tar_head(size)) if tar else b""
    tail = disk_tar_tail(size) if tar else b""
    offsets = list(range(0, size, BLOCK_SIZE)) or [0]
    hashes = _Hashes()
    compressed = compression != "none"
    loop = asyncio.get_running_loop()
    inflight: deque[asyncio.Future[tuple[bytes, bytes]]] = deque()
    fd = os.open(path, os.O_RDONLY)
    executor = ThreadPoolExecutor(COMPRESS_THREADS, thread_name_prefix="containerdisk-compress")
    try:
        next_block = 0
        done_bytes = 0
        while next_block < len(offsets) or inflight:
            while next_block < len(offsets) and len(inflight) < IN_FLIGHT:
                off = offsets[next_block]
                n = min(BLOCK_SIZE, size - off)
                prefix = head if next_block == 0 else b""
                suffix = tail if next_block == len(offsets) - 1 else b""
                inflight.append(
                    loop.run_in_executor(
                        executor, _read_block, fd, off, n, prefix, suffix, compression
                    )
                )
                next_block += 1
            index = next_block - len(inflight)
            data, blob = await inflight.popleft()
            prefix = head if index == 0 else b""
            suffix = tail if index == len(offsets) - 1 else b""
            await asyncio.to_thread(hashes.update, prefix, data, suffix, blob, compressed, tar)
            await sink(blob)
            done_bytes += len(data)
            if progress:
                progress(phase, done_bytes, size)
    finally:
        for fut in inflight:
            fut.cancel()
        await asyncio.gather(*inflight, return_exceptions=True)
        executor.shutdown(wait=True)
        os.close(fd)
    disk = "sha256:" + hashes.disk.hexdigest()
    plain = "sha256:" + hashes.plain.hexdigest() if tar else disk
    blob_digest = "sha256:" + hashes.blob.hexdigest() if (compressed or tar) else disk
    return BlobResult(blob_digest, hashes.blob_size, plain, disk, size)
