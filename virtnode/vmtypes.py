"""Small value types shared by the VM modules."""

from __future__ import annotations

import dataclasses
import enum


class Phase(enum.StrEnum):
    """``status.phase`` of a VMI (KubeVirt's names; pausing keeps ``Running``)."""

    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclasses.dataclass(frozen=True)
class AccelInfo:
    """The accelerator QEMU runs with, why, and the QEMU arguments that select it."""

    accel: str
    reason: str
    qemu_args: tuple[str, ...]
