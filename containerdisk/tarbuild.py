"""The containerDisk layer's tar framing, written by hand so it is exact.

KubeVirt's layout: ``disk/`` (mode 0555) then ``disk/disk.img`` (mode 0444), both
owned by 107:107 (the qemu user in virt-launcher). PAX headers only appear when
a field does not fit ustar (disks over 8 GiB), as Go's archive/tar does.
"""

from __future__ import annotations

import tarfile

BLOCK = 512
QEMU_UID = 107
QEMU_GID = 107
DISK_DIR = "disk/"
DISK_FILE = "disk/disk.img"
DIR_MODE = 0o555
FILE_MODE = 0o444


def _info(name: str, kind: bytes, mode: int, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = QEMU_UID
    info.gid = QEMU_GID
    info.uname = ""
    info.gname = ""
    info.size = size
    info.mtime = mtime
    if size < 8**11:
        return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def disk_tar_head(size: int, *, name: str = DISK_FILE, mtime: int = 0) -> bytes:
    """The tar bytes that precede the disk's content: the directory and the file header."""
    return _info(DISK_DIR, tarfile.DIRTYPE, DIR_MODE, 0, mtime) + _info(
        name, tarfile.REGTYPE, FILE_MODE, size, mtime
    )


def disk_tar_tail(size: int) -> bytes:
    """Padding of the disk's last block plus the two zero blocks that end an archive."""
    return b"\0" * (-size % BLOCK) + b"\0" * (2 * BLOCK)


def tar_size(size: int, *, name: str = DISK_FILE, mtime: int = 0) -> int:
    """Total bytes of the uncompressed layer for a disk of ``size`` bytes."""
    return len(disk_tar_head(size, name=name, mtime=mtime)) + size + len(disk_tar_tail(size))
