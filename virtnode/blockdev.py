"""Block nodes and guest devices for one attached disk, as QEMU JSON objects.

The same dicts serve both ways in: ``-blockdev``/``-device`` JSON at start and
``blockdev-add``/``device_add`` over QMP for hotplug, so a path or serial never
passes through QEMU's comma-separated option parser.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from virtnode.spec import Disk

Format = Literal["raw", "qcow2"]

# The q35 machine's built-in AHCI controller has six ports.
SATA_PORTS = 6
SCSI_CONTROLLER_ID = "scsi0"


@dataclass(frozen=True)
class AttachedDisk:
    """A guest disk and the host file that backs it."""

    disk: Disk
    path: Path
    format: Format
    readonly: bool = False
    #: PCIe root port (``hpN``) for virtio disks that may be unplugged later.
    port: str | None = None
    #: AHCI port index for sata disks.
    sata_unit: int | None = None
    #: Bumped when a mirror moves the disk to new nodes (node names must stay unique).
    generation: int = 0

    @property
    def node_name(self) -> str:
        # QEMU node names are at most 31 characters; disk names may be 63.
        base = "dp" + hashlib.sha256(self.disk.name.encode()).hexdigest()[:16]
        return f"{base}-g{self.generation}" if self.generation else base

    @property
    def file_node_name(self) -> str:
        return self.node_name + "-file"

    @property
    def device_id(self) -> str:
        # KubeVirt's user alias convention; qdev ids have no length limit.
        return "ua-" + self.disk.name


def _cache(attached: AttachedDisk) -> dict[str, Any]:
    return {"direct": attached.disk.cache == "none", "no-flush": False}


def file_node(attached: AttachedDisk) -> dict[str, Any]:
    node: dict[str, Any] = {
        "driver": "file",
        "node-name": attached.file_node_name,
        "filename": str(attached.path),
        "read-only": attached.readonly,
        "cache": _cache(attached),
    }
    if attached.disk.io is not None:
        node["aio"] = attached.disk.io
    return node


def format_node(attached: AttachedDisk) -> dict[str, Any]:
    """The format node; it names the file node, which is added first."""
    return {
        "driver": attached.format,
        "node-name": attached.node_name,
        "file": attached.file_node_name,
        "read-only": attached.readonly,
        "cache": _cache(attached),
    }


def device(attached: AttachedDisk) -> dict[str, Any]:
    """The guest-visible device for ``attached``."""
    disk = attached.disk
    dev: dict[str, Any] = {"id": attached.device_id, "drive": attached.node_name}
    if disk.bus == "virtio":
        dev["driver"] = "virtio-blk-pci"
        if attached.port is not None:
            dev["bus"] = attached.port
    elif disk.bus == "sata":
        dev["driver"] = "ide-cd" if disk.kind == "cdrom" else "ide-hd"
        dev["bus"] = f"ide.{attached.sata_unit or 0}"
    else:
        dev["driver"] = "scsi-cd" if disk.kind == "cdrom" else "scsi-hd"
        dev["bus"] = f"{SCSI_CONTROLLER_ID}.0"
    if disk.boot_order is not None:
        dev["bootindex"] = disk.boot_order
    if disk.serial is not None:
        dev["serial"] = disk.serial
    if disk.kind != "cdrom":
        dev["write-cache"] = "off" if disk.cache == "writethrough" else "on"
    return dev
