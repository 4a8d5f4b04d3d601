"""Safety before trust: ``qemu-img info`` under limits, then refuse what is dangerous.

qemu-img only ever sees a file whose name we chose (``probe.img`` or
``scratch.img`` inside the volume's work dir) or our own NBD export of the
source (``cdi/nbd.py``, with an explicit driver), so a hostile image cannot
steer it to ``json:``/``file:`` names or other files.
VMDK descriptors are screened in Python first, because opening one makes
qemu-img follow its extent paths.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdi.errors import ImageTooLarge, InvalidImage, UnsafeImage, UnsupportedFormat
from cdi.formats import qcow2
from cdi.formats.detect import Format
from cdi.settings import ImportSettings
from cdi.writer import human

#: qemu-img format names we import (iso is imported as raw).
PROBE_NAMES = ("probe.img", "scratch.img", "export.sock")
ALLOWED = {"raw", "qcow2", "vmdk", "vdi", "vpc", "vhdx"}
_SAFE_VMDK_TYPES = {"monolithicSparse", "streamOptimized"}
_EXTENT = re.compile(r'^\s*(RW|RDONLY|NOACCESS)\s+\d+\s+(\w+)(?:\s+"([^"]*)")?', re.MULTILINE)


@dataclass(frozen=True)
class QemuInput:
    """What qemu-img opens: a file we named (by bare name, from its directory), or an
    ``--image-opts`` string for our NBD export (driver given explicitly)."""

    path: Path | None = None
    image_opts: str | None = None

    def argv(self, fmt: str | None) -> list[str]:
        if self.image_opts is not None:
            return ["--image-opts", self.image_opts]
        assert self.path is not None
        return [*(["-f", fmt] if fmt else []), self.path.name]

    @property
    def cwd(self) -> Path | None:
        return self.path.parent if self.path is not None else None

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else str(self.image_opts)


@dataclass(frozen=True)
class ImageInfo:
    format: str
    virtual_size: int


def check_vmdk_descriptor(head: bytes, what: str) -> None:
    """Refuse VMDKs whose descriptor points at other files (only self-contained kinds pass)."""
    text = head[:65536]
    if head.startswith(b"KDMV"):
        desc_sector = int.from_bytes(head[28:36], "little")
        desc_size = int.from_bytes(head[36:44], "little")
        text = head[desc_sector * 512 : (desc_sector + desc_size) * 512] if desc_sector else b""
        if not text:
            return
    descriptor = text.split(b"\x00", 1)[0].decode("latin-1")
    create = re.search(r'createType\s*=\s*"([^"]*)"', descriptor)
    kind = create.group(1) if create else "unknown"
    if kind not in _SAFE_VMDK_TYPES or not head.startswith(b"KDMV"):
        raise UnsafeImage(
            f"{what} is a VMDK of type {kind!r} whose extents live in other files; "
            "only self-contained monolithicSparse or streamOptimized VMDKs are imported"
        )
    for _access, extent_type, _name in _EXTENT.findall(descriptor):
        if extent_type not in ("SPARSE", "ZERO"):
            raise UnsafeImage(f"{what} has a {extent_type} extent pointing outside the image")


def _limits(settings: ImportSettings) -> Any:
    cpu, memory = settings.qemu_img_cpu_seconds, settings.qemu_img_memory_bytes

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return apply


async def qemu_img_info(image: QemuInput, settings: ImportSettings, what: str) -> dict[str, Any]:
    """``qemu-img info --output=json`` on a file we named, under CPU and memory limits."""
    proc = await asyncio.create_subprocess_exec(
        "qemu-img",
        "info",
        "--output=json",
        *image.argv(None),
        cwd=image.cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_limits(settings),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), settings.qemu_img_info_timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise UnsafeImage(f"qemu-img info on {what} did not finish in time; refused") from None
    if proc.returncode is not None and proc.returncode < 0:
        raise UnsafeImage(f"qemu-img info on {what} exceeded its CPU or memory limit; refused")
    if proc.returncode != 0:
        reason = err.decode(errors="replace").strip().splitlines()[-1:] or ["unknown error"]
        reason_text = reason[0].replace(image.label, "image")
        raise InvalidImage(f"qemu-img cannot read {what}: {reason_text}")
    try:
        info: dict[str, Any] = json.loads(out)
    except ValueError as exc:
        raise InvalidImage(f"qemu-img info on {what} printed no JSON") from exc
    return info


def judge(info: dict[str, Any], detected: Format, usable: int, what: str) -> ImageInfo:
    """Refuse backing files, external data, foreign extents, oversize, format mismatch."""
    fmt = str(info.get("format", "unknown"))
    expected = "raw" if detected == "iso" else detected
    if fmt not in ALLOWED:
        raise UnsupportedFormat(f"{what} is in format {fmt!r}, which is not imported")
    if fmt != expected:
        raise UnsupportedFormat(f"{what} looks like {expected} but qemu-img reads it as {fmt}")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise UnsafeImage(f"{what} names a backing file; only self-contained images are imported")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file") or specific.get("data-file-raw"):
        raise UnsafeImage(f"{what} keeps its data in an external data file; refused")
    for extent in specific.get("extents", []) or []:
        if extent.get("filename") and Path(str(extent["filename"])).name not in PROBE_NAMES:
            raise UnsafeImage(f"{what} has an extent in another file; refused")
    size = int(info.get("virtual-size", 0))
    check_size(size, usable, what)
    return ImageInfo(fmt, size)


def check_size(virtual_size: int, usable: int, what: str) -> None:
    if virtual_size > usable:
        raise ImageTooLarge(
            f"{what} has a virtual size of {human(virtual_size)} ({virtual_size} bytes), larger "
            f"than the volume's usable size of {human(usable)} ({usable} bytes); "
            "request a larger volume"
        )


async def inspect(
    image: Path | QemuInput,
    detected: Format,
    usable: int,
    settings: ImportSettings,
    what: str,
    *,
    head: bytes,
) -> ImageInfo:
    """Screen, run qemu-img info under limits, and judge."""
    if detected == "vmdk":
        check_vmdk_descriptor(head, what)
    target = image if isinstance(image, QemuInput) else QemuInput(path=image)
    info = await qemu_img_info(target, settings, what)
    return judge(info, detected, usable, what)


async def inspect_head(
    workdir: Path,
    fmt: Format,
    head: bytes,
    size: int | None,
    usable: int,
    settings: ImportSettings,
    what: str,
) -> int | None:
    """qemu-img info on the head, sparse-extended to the real size, before any transfer.

    Returns the virtual size, or None for formats whose metadata lies past the
    head (vhdx & co.), which are judged again on the whole image.
    """
    if fmt == "qcow2":
        qcow2.parse_header(head, what)  # clearer refusals than qemu-img's
    probe = workdir / PROBE_NAMES[0]
    total = size if size is not None else len(head)
    await asyncio.to_thread(_write_probe, probe, head, total)
    try:
        image = await inspect(probe, fmt, usable, settings, what, head=head)
    except InvalidImage:
        if fmt in ("raw", "iso", "qcow2"):
            raise
        return None
    finally:
        probe.unlink(missing_ok=True)
    if fmt in ("raw", "iso"):
        check_size(total, usable, what)
        return total
    return image.virtual_size


def _write_probe(path: Path, head: bytes, size: int) -> None:
    with path.open("wb") as handle:
        handle.write(head)
        handle.truncate(max(size, len(head)))
