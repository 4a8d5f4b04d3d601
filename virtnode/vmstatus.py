"""A VM's KubeVirt-style ``status``: phase, printableStatus, conditions, volumes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from virtnode.vmtypes import Phase

if TYPE_CHECKING:
    from virtnode.vm import VirtualMachine

_PRINTABLE = {
    Phase.PENDING: "Provisioning",
    Phase.SCHEDULED: "Starting",
    Phase.SUCCEEDED: "Stopped",
    Phase.FAILED: "Failed",
}


def printable_status(vm: VirtualMachine) -> str:
    if vm.phase is not Phase.RUNNING:
        return _PRINTABLE[vm.phase]
    if vm.extra.get("migrating"):
        return "Migrating"
    if vm.stop_requested:
        return "Stopping"
    return "Paused" if vm.paused else "Running"


def render_status(vm: VirtualMachine) -> dict[str, Any]:
    running = vm.phase is Phase.RUNNING
    conditions = [
        _condition("Ready", running and not vm.paused, "" if running else vm.phase.value),
        _condition("Paused", vm.paused, "PausedByUser" if vm.paused else ""),
    ]
    if vm.accel.accel == "tcg":
        conditions.append(_condition("SoftwareEmulation", True, "TCG"))
    return {
        "phase": vm.phase.value,
        "printableStatus": printable_status(vm),
        "reason": vm.reason,
        "message": vm.message,
        "nodeName": vm.settings.node_name,
        "conditions": conditions,
        "accelerator": {"name": vm.accel.accel, "reason": vm.accel.reason},
        "qemu": {
            "pid": vm.identity.pid if vm.identity else None,
            "uid": vm.ctx.run_as.uid if vm.ctx.run_as else None,
            "driver": vm.ctx.driver.name,
        },
        "volumeStatus": [
            {
                "name": name,
                "target": attached.device_id,
                "phase": "Ready",
                **({"hotplugVolume": {}} if name in vm.hotplugged else {}),
            }
            for name, attached in vm.disks.items()
        ],
        **vm.extra,
    }


def _condition(kind: str, status: bool, reason: str) -> dict[str, Any]:
    return {"type": kind, "status": "True" if status else "False", "reason": reason}
