"""Turn a VMI's volumes into files QEMU opens.

- ``persistentVolumeClaim`` / ``dataVolume``: ``<volumes>/<namespace>/<claim>/disk.img``,
  raw (KubeVirt's filesystem-PVC convention), opened as raw, never probed.
- ``emptyDisk``: a sparse qcow2 of the requested capacity in the run dir.
- ``cloudInitNoCloud``: a NoCloud ISO in the run dir.
- ``containerDisk``: the image's disk, pulled once per digest into the node cache
  (:class:`ContainerDiskSource`), as read-only backing file of a qcow2 overlay in
  the run dir.

Ephemeral files live in the run dir, so removing the run dir on stop deletes them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from virtnode.blockdev import SATA_PORTS, AttachedDisk, Format
from virtnode.cloudinit import nocloud_sections, write_nocloud_iso
from virtnode.errors import DiskError, SpecError
from virtnode.ownership import check_reachable, grant
from virtnode.process import RunAs
from virtnode.rundir import RunDir
from virtnode.spec import Disk, KernelBoot, VmiSpec, Volume, parse_quantity

QEMU_IMG_TIMEOUT = 60.0


class ContainerDiskSource(Protocol):
    """Where containerDisk images come from: a local, read-only file per image digest."""

    async def fetch(self, image: str) -> tuple[Path, Format]: ...


def volume_path(volumes: Path, namespace: str, claim: str) -> Path:
    return volumes / namespace / claim / "disk.img"


@dataclasses.dataclass
class DiskPreparer:
    volumes: Path
    run_dir: RunDir
    run_as: RunAs | None
    containerdisks: ContainerDiskSource | None = None

    async def prepare_all(self, spec: VmiSpec) -> list[AttachedDisk]:
        out: list[AttachedDisk] = []
        sata = 0
        for disk in spec.disks:
            unit = None
            if disk.bus == "sata":
                if sata >= SATA_PORTS:
                    raise SpecError(f"VMI {spec.key} has more than {SATA_PORTS} sata disks")
                unit, sata = sata, sata + 1
            attached = await self.prepare(spec, disk, spec.volume(disk.name), sata_unit=unit)
            out.append(attached)
        return out

    async def prepare(
        self,
        spec: VmiSpec,
        disk: Disk,
        volume: Volume,
        *,
        port: str | None = None,
        sata_unit: int | None = None,
    ) -> AttachedDisk:
        path, fmt, readonly = await self._file_for(spec, volume)
        check_reachable(path, self.run_as)
        return AttachedDisk(
            disk=disk,
            path=path,
            format=fmt,
            readonly=readonly or disk.readonly,
            port=port,
            sata_unit=sata_unit,
        )

    async def _file_for(self, spec: VmiSpec, volume: Volume) -> tuple[Path, Format, bool]:
        if volume.kind in ("persistentVolumeClaim", "dataVolume"):
            path = volume_path(self.volumes, spec.namespace, volume.claim_name)
            if not path.is_file():
                raise DiskError(
                    f"volume {spec.namespace}/{volume.claim_name} (for {volume.name!r}) has no "
                    f"disk at {path}; create or import the volume first"
                )
            grant(path, self.run_as)
            return path, "raw", bool(volume.source.get("readOnly", False))
        if volume.kind == "emptyDisk":
            path = self.run_dir.disks / f"{volume.name}.qcow2"
            size = str(volume.source["capacity"])
            await qemu_img("create", "-q", "-f", "qcow2", str(path), _img_size(size))
            grant(path, self.run_as)
            return path, "qcow2", False
        if volume.kind == "cloudInitNoCloud":
            path = self.run_dir.disks / f"{volume.name}.iso"
            sections = nocloud_sections(volume.source, spec.namespace, spec.name)
            await asyncio.to_thread(write_nocloud_iso, path, sections)
            grant(path, self.run_as)
            return path, "raw", True
        return await self._container_disk(volume)

    async def _container_disk(self, volume: Volume) -> tuple[Path, Format, bool]:
        if self.containerdisks is None:
            raise SpecError(f"volume {volume.name!r}: this node has no containerDisk cache")
        base, base_format = await self.containerdisks.fetch(str(volume.source["image"]))
        check_reachable(base, self.run_as)
        overlay = self.run_dir.disks / f"{volume.name}.overlay.qcow2"
        await qemu_img(
            "create", "-q", "-f", "qcow2", "-b", str(base), "-F", base_format, str(overlay)
        )
        grant(overlay, self.run_as)
        return overlay, "qcow2", False


def _img_size(quantity: str) -> str:
    return str(parse_quantity(quantity, "emptyDisk capacity"))


async def qemu_img(*args: str, limit: float = QEMU_IMG_TIMEOUT) -> str:
    """Run ``qemu-img`` and return its stdout; failures become :class:`DiskError`."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "qemu-img",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise DiskError(f"could not run qemu-img: {exc}") from exc
    try:
        async with asyncio.timeout(limit):
            out, err = await proc.communicate()
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise DiskError(f"qemu-img {args[0]} took longer than {limit:g} s") from exc
    if proc.returncode != 0:
        raise DiskError(f"qemu-img {args[0]} failed: {err.decode(errors='replace').strip()}")
    return out.decode()


def stage_kernel(spec: VmiSpec, run_dir: RunDir, run_as: RunAs | None) -> VmiSpec:
    """Make host kernel/initrd files readable by QEMU's user (hard link, else copy; blocking).

    The files usually live in a cache under root's home that uid 107 cannot enter.
    """
    kb = spec.kernel_boot
    if kb is None or run_as is None:
        return spec
    staged = [_stage(p, run_dir.boot, run_as) for p in (kb.kernel, kb.initrd) if p is not None]
    initrd = staged[1] if kb.initrd is not None else None
    return dataclasses.replace(
        spec, kernel_boot=KernelBoot(kernel=staged[0], initrd=initrd, cmdline=kb.cmdline)
    )


def _stage(src: Path, boot_dir: Path, run_as: RunAs) -> Path:
    dest = boot_dir / src.name
    try:
        os.link(src, dest)
        if not os.stat(dest).st_mode & 0o004:
            dest.unlink()
            raise PermissionError("not world-readable")
    except OSError:
        shutil.copyfile(src, dest)
        grant(dest, run_as)
    return dest


def remove_files(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
