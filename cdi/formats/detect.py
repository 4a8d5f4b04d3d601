"""Detect a disk's format or compression from its first bytes, never from its name."""

from __future__ import annotations

from typing import Literal

Format = Literal["raw", "iso", "qcow2", "vmdk", "vdi", "vpc", "vhdx"]
Compression = Literal["gz", "xz", "zst", "bz2"]

#: Bytes of the head needed for detection (ISO's magic sits at 0x8001).
HEADER_BYTES = 64 * 1024

_COMPRESSION: tuple[tuple[bytes, Compression], ...] = (
    (b"\x1f\x8b", "gz"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zst"),
    (b"BZh", "bz2"),
)


def detect_compression(head: bytes) -> Compression | None:
    for magic, name in _COMPRESSION:
        if head.startswith(magic):
            if name == "bz2" and not (len(head) > 3 and head[3:4] in b"123456789"):
                continue
            return name
    return None


def detect_format(head: bytes) -> Format:
    """The container format; anything without a known magic is raw."""
    if head.startswith(b"QFI\xfb"):
        return "qcow2"
    if head.startswith(b"KDMV") or head.startswith(b"# Disk DescriptorFile"):
        return "vmdk"
    if head[0x40:0x44] == b"\x7f\x10\xda\xbe":
        return "vdi"
    if head.startswith(b"conectix"):
        return "vpc"
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    if head[0x8001:0x8006] == b"CD001":
        return "iso"
    return "raw"
