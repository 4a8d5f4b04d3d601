"""Disk format checks: ``qemu-img info`` under limits, and a qcow2 header check for streams.

KubeVirt accepts a containerDisk's disk as qcow2 or raw, with no backing
file. ``qemu-img info`` is run as CDI runs it: under CPU-time and address-space
limits (``prlimit``), so a crafted image cannot make the probe eat the host.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from containerdisk.errors import BuildError, UnsafeLayer

QEMU_IMG = "qemu-img"
PROBE_CPU_SECONDS = 30  # CDI's limit for qemu-img info
PROBE_ADDRESS_SPACE = 1024 * 1024 * 1024  # 1 GiB, as CDI
PROBE_TIMEOUT = 60.0
ALLOWED_FORMATS = ("qcow2", "raw")
QCOW2_MAGIC = b"QFI\xfb"
_QCOW2_EXTERNAL_DATA_FILE = 1 << 2


@dataclass(frozen=True, slots=True)
class DiskInfo:
    format: str
    virtual_size: int
    actual_size: int | None
    backing_file: str | None
    data_file: str | None


async def qemu_img_info(path: Path) -> DiskInfo:
    """``qemu-img info --output=json`` under CPU/memory limits."""
    argv = [
        "prlimit",
        f"--cpu={PROBE_CPU_SECONDS}",
        f"--as={PROBE_ADDRESS_SPACE}",
        "--",
        QEMU_IMG,
        "info",
        "--output=json",
        str(path),
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT)
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise UnsafeLayer(f"qemu-img info on {path.name} ran over {PROBE_TIMEOUT} s") from exc
    if proc.returncode != 0:
        reason = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise UnsafeLayer(f"qemu-img info refused {path.name}: {reason[0][:200]}")
    try:
        obj = json.loads(out)
        return DiskInfo(
            format=str(obj["format"]),
            virtual_size=int(obj["virtual-size"]),
            actual_size=obj.get("actual-size"),
            backing_file=obj.get("backing-filename") or obj.get("full-backing-filename"),
            data_file=(obj.get("format-specific", {}).get("data", {}) or {}).get("data-file"),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnsafeLayer(f"qemu-img info on {path.name} printed unexpected JSON") from exc


def check_disk(info: DiskInfo, what: str) -> None:
    """KubeVirt's rule: qcow2 or raw, no backing file (and no external data file)."""
    if info.format not in ALLOWED_FORMATS:
        raise UnsafeLayer(f"{what} is {info.format}; a containerDisk must hold qcow2 or raw")
    if info.backing_file:
        raise UnsafeLayer(f"{what} has a backing file ({info.backing_file[:120]!r}); refused")
    if info.data_file:
        raise UnsafeLayer(f"{what} has an external data file; refused")


def check_stream_head(head: bytes, what: str) -> str:
    """Check a disk's first bytes: a qcow2 must not name a backing or data file.

    Returns ``qcow2`` or ``raw`` (anything without the qcow2 magic is raw here;
    the consumer's own probe decides what raw content really is).
    """
    if not head.startswith(QCOW2_MAGIC):
        return "raw"
    if len(head) < 104:
        raise UnsafeLayer(f"{what} is a truncated qcow2 image")
    version, backing_offset = struct.unpack_from(">IQ", head, 4)
    if backing_offset != 0:
        raise UnsafeLayer(f"{what} is a qcow2 image with a backing file; refused")
    if version >= 3:
        (incompatible,) = struct.unpack_from(">Q", head, 72)
        if incompatible & _QCOW2_EXTERNAL_DATA_FILE:
            raise UnsafeLayer(f"{what} is a qcow2 image with an external data file; refused")
    return "qcow2"


async def convert_to_qcow2(source: Path, dest: Path, *, compress: bool = True) -> None:
    """``qemu-img convert -O qcow2 [-c]``; qcow2 cannot be written to a pipe, so a file."""
    argv = (
        [QEMU_IMG, "convert", "-O", "qcow2"]
        + (["-c"] if compress else [])
        + ["-W", str(source), str(dest)]
    )
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        reason = err.decode(errors="replace").strip()[:300]
        raise BuildError(f"qemu-img convert of {source} to qcow2 failed: {reason}")
