"""``state.json``: what a VM records for re-adoption, and rebuilding its disks from it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtnode.blockdev import AttachedDisk
from virtnode.spec import Disk, VmiSpec, parse_disk

if TYPE_CHECKING:
    from virtnode.vm import VirtualMachine


def restore_disks(spec: VmiSpec, state: Mapping[str, Any]) -> dict[str, AttachedDisk]:
    recorded: Mapping[str, Any] = state.get("disks", {})
    hotplugged: Mapping[str, Any] = state.get("hotplugged", {})
    by_name: dict[str, Disk] = {d.name: d for d in spec.disks}
    for name, entry in hotplugged.items():
        by_name[name] = parse_disk(entry["disk"])
    out: dict[str, AttachedDisk] = {}
    for name, entry in recorded.items():
        disk = by_name.get(name)
        if disk is None:
            continue
        out[name] = AttachedDisk(
            disk=disk,
            path=Path(entry["path"]),
            format=entry["format"],
            readonly=bool(entry["readonly"]),
            port=entry.get("port"),
            sata_unit=entry.get("sataUnit"),
            generation=int(entry.get("generation", 0)),
        )
    return out


def state_of(vm: VirtualMachine) -> dict[str, Any]:
    """What ``state.json`` records so a restarted agent can re-adopt ``vm``."""
    assert vm.identity is not None
    return {
        "pid": vm.identity.pid,
        "startTicks": vm.identity.start_ticks,
        "accel": {
            "name": vm.accel.accel,
            "reason": vm.accel.reason,
            "args": list(vm.accel.qemu_args),
        },
        "disks": {
            name: {
                "path": str(a.path),
                "format": a.format,
                "readonly": a.readonly,
                "port": a.port,
                "sataUnit": a.sata_unit,
                "generation": a.generation,
            }
            for name, a in vm.disks.items()
        },
        "hotplugged": vm.hotplugged,
        "snapshots": vm.snapshots,
        "startedAt": vm.started_at,
        "interfaces": vm.extra.get("interfaces", []),
    }
