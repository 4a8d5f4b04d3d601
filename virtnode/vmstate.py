"""Rebuild a VM's attached disks from ``state.json`` when re-adopting it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from virtnode.blockdev import AttachedDisk
from virtnode.spec import Disk, VmiSpec, parse_disk


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
