"""Disk-to-disk copy inside a pool: reflink when possible, else a sparse extent copy.

``FICLONE`` shares the source's extents (btrfs, XFS with reflink); where
the filesystem refuses (ext4, tmpfs, across filesystems) the copy walks
the source's data extents with ``SEEK_DATA``/``SEEK_HOLE`` and copies only
those with ``copy_file_range``, so holes stay holes.

A source open for writing (a running VM, an import) is refused: taking a
read lease (``F_SETLEASE``/``F_RDLCK``) fails with ``EAGAIN`` exactly when
some process has the file open for writing. The lease is dropped at once,
so no lease-break signal can reach us during the copy.

Used by the service's ``pvc`` clone and by the pipeline's persistent
containerDisk reuse (an image already imported into another volume).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from cdi.errors import VolumeBusy, VolumeError

FICLONE = 0x40049409
COPY_CHUNK = 64 * 1024 * 1024
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS}


def ensure_not_written(path: Path) -> None:
    """Raise :class:`VolumeBusy` when any process has ``path`` open for writing."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            raise VolumeBusy(
                f"source disk {path.parent.name} is open for writing (a running VM or import); "
                "stop the writer and clone again"
            ) from exc
        if exc.errno not in (errno.EINVAL, errno.EACCES):
            raise
        return  # leases unsupported here; the volume lock still guards imports
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    finally:
        os.close(fd)


def copy_disk(source: Path, target: Path, size: int, progress: Callable[[int, int], None]) -> str:
    """Copy ``source`` into a new ``target`` of ``size`` bytes; returns "reflink" or "sparse".

    ``progress(done, total)`` is called with data bytes copied so far.
    """
    src_size = source.stat().st_size
    with open(source, "rb") as src, open(target, "wb") as dst:
        method = "reflink" if _try_reflink(src.fileno(), dst.fileno()) else "sparse"
        if method == "sparse":
            extents = data_extents(src.fileno(), src_size)
            total = sum(end - start for start, end in extents)
            done = 0
            for start, end in extents:
                done = _copy_range(src.fileno(), dst.fileno(), start, end, done, total, progress)
        os.ftruncate(dst.fileno(), size)
        os.fsync(dst.fileno())
    progress(src_size, src_size)
    return method


def _try_reflink(src: int, dst: int) -> bool:
    try:
        fcntl.ioctl(dst, FICLONE, src)
    except OSError as exc:
        if exc.errno in _NO_REFLINK:
            return False
        raise
    return True


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """``(start, end)`` of every data run in ``fd`` (holes skipped)."""
    extents: list[tuple[int, int]] = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        extents.append((start, min(end, size)))
        offset = end
    return extents


def _copy_range(
    src: int,
    dst: int,
    start: int,
    end: int,
    done: int,
    total: int,
    progress: Callable[[int, int], None],
) -> int:
    offset = start
    while offset < end:
        count = min(COPY_CHUNK, end - offset)
        copied = os.copy_file_range(src, dst, count, offset, offset)
        if copied == 0:
            raise VolumeError(f"source disk ended early at byte {offset} while cloning")
        offset += copied
        done += copied
        progress(done, total)
    return done


def allocated_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512
