"""The seam between a VM's lifecycle and what runs it: QEMU directly, or libvirt.

A :class:`VmDriver` starts the process for a prepared VM and gives it a
:class:`Monitor` (QMP commands and events). :class:`QemuDriver` (the default)
builds the argv and talks QMP over QEMU's own socket;
:class:`virtnode.libvirt_driver.LibvirtDriver` defines a transient libvirt domain
and passes QMP through ``virDomainQemuMonitorCommand``. Everything else (disks,
console, phases, stop, exit watch) is shared.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from virtnode.argv import LaunchOptions, build_argv
from virtnode.blockdev import AttachedDisk
from virtnode.errors import DriverUnavailableError
from virtnode.process import ProcessIdentity, RunAs, launch
from virtnode.qmp import QmpEvent, QmpSession
from virtnode.rundir import RunDir
from virtnode.settings import AgentSettings
from virtnode.spec import VmiSpec
from virtnode.vmtypes import AccelInfo


class Monitor(Protocol):
    """What a VM needs from QMP, whichever way it is reached."""

    async def connect(self, limit: float | None = None) -> None: ...

    async def execute(
        self, command: str, arguments: Mapping[str, Any] | None = None, limit: float | None = None
    ) -> Any: ...

    def events(self) -> AsyncIterator[QmpEvent]: ...

    async def close(self) -> None: ...


class VmDriver(Protocol):
    name: str
    #: True when the driver runs disk operations itself (libvirt: hotplug, unplug,
    #: resize, snapshot, commit, copy through its API, so its view of the domain stays
    #: true); False: :mod:`virtnode.volumeops` does them over QMP.
    manages_devices: bool

    def run_as(self, default: RunAs | None) -> RunAs | None:
        """The user QEMU runs as under this driver (files are handed to it)."""
        ...

    async def start(
        self,
        spec: VmiSpec,
        disks: Sequence[AttachedDisk],
        run: RunDir,
        accel: AccelInfo,
        *,
        incoming: bool,
        run_as: RunAs | None,
    ) -> ProcessIdentity: ...

    def monitor(self, spec: VmiSpec, run: RunDir, observe: Any) -> Monitor: ...

    async def attach_disk(self, spec: VmiSpec, attached: AttachedDisk) -> None:
        """Hot-plug ``attached`` (only when :attr:`manages_devices`)."""
        ...

    async def detach_disk(self, spec: VmiSpec, attached: AttachedDisk) -> None:
        """Ask for ``attached`` to be unplugged; the guest's release is ``DEVICE_DELETED``."""
        ...

    async def resize_disk(self, spec: VmiSpec, attached: AttachedDisk, size: int) -> None:
        """Grow ``attached`` to ``size`` bytes (only when :attr:`manages_devices`)."""
        ...

    # Block jobs (only when :attr:`manages_devices`); readiness is QEMU's BLOCK_JOB_READY.
    async def snapshot_disk(self, spec: VmiSpec, attached: AttachedDisk, overlay: Path) -> None: ...

    async def start_commit(self, spec: VmiSpec, attached: AttachedDisk) -> None: ...

    async def start_copy(self, spec: VmiSpec, attached: AttachedDisk, target: Path) -> None: ...

    async def pivot(self, spec: VmiSpec, attached: AttachedDisk) -> None: ...

    async def close(self) -> None: ...


class QemuDriver:
    """QEMU started by the agent (``-daemonize``), QMP over its unix socket."""

    name = "qemu"
    manages_devices = False

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings

    def run_as(self, default: RunAs | None) -> RunAs | None:
        return default

    async def start(
        self,
        spec: VmiSpec,
        disks: Sequence[AttachedDisk],
        run: RunDir,
        accel: AccelInfo,
        *,
        incoming: bool,
        run_as: RunAs | None,
    ) -> ProcessIdentity:
        options = LaunchOptions(
            accel_args=accel.qemu_args,
            emulator=self.settings.emulator,
            hotplug_ports=self.settings.hotplug_ports,
            incoming=incoming,
        )
        argv = build_argv(spec, disks, run.launch_paths, options)
        return await launch(
            argv,
            pidfile=run.launch_paths.pidfile,
            vm=spec.key,
            limit=self.settings.launch_timeout,
            run_as=run_as,
        )

    def monitor(self, spec: VmiSpec, run: RunDir, observe: Any) -> Monitor:
        return QmpSession(
            run.launch_paths.qmp_socket,
            vm=spec.key,
            timeouts=self.settings.qmp,
            event_queue_size=self.settings.event_queue_size,
            observe_latency=observe,
        )

    async def attach_disk(self, spec: VmiSpec, attached: AttachedDisk) -> None:
        raise DriverUnavailableError(f"VM {spec.key}: the qemu driver hot-plugs over QMP")

    async def detach_disk(self, spec: VmiSpec, attached: AttachedDisk) -> None:
        raise DriverUnavailableError(f"VM {spec.key}: the qemu driver unplugs over QMP")

    async def resize_disk(self, spec: VmiSpec, attached: AttachedDisk, size: int) -> None:
        raise DriverUnavailableError(f"VM {spec.key}: the qemu driver resizes over QMP")

    async def snapshot_disk(self, spec: VmiSpec, attached: AttachedDisk, overlay: Path) -> None:
        raise DriverUnavailableError(f"VM {spec.key}: the qemu driver snapshots over QMP")

    async def start_commit(self, spec: VmiSpec, attached: AttachedDisk) -> None:
        raise DriverUnavailableError(f"VM {spec.key}: the qemu driver commits over QMP")

    async def start_copy(self, spec: VmiSpec, attached: AttachedDisk, target: Path) -> None:
        raise DriverUnavailableError(f"VM {spec.key}: the qemu driver mirrors over QMP")

    async def pivot(self, spec: VmiSpec, attached: AttachedDisk) -> None:
        raise DriverUnavailableError(f"VM {spec.key}: the qemu driver pivots over QMP")

    async def close(self) -> None:
        return None
