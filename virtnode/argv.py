"""VMI spec + prepared disks -> QEMU argv (pure: no I/O, fully unit-tested).

Every element comes from a validated value: numbers from :mod:`virtnode.spec`,
block nodes, NICs and devices as JSON (``-blockdev {...}``, ``-netdev {...}``),
and the few values that must go through QEMU's ``key=value,...`` syntax (socket
paths) have their commas doubled and control characters rejected.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from virtnode.blockdev import SCSI_CONTROLLER_ID, AttachedDisk, device, file_node, format_node
from virtnode.errors import SpecError
from virtnode.network import netdev, nic_device
from virtnode.spec import VmiSpec

DEFAULT_EMULATOR = "qemu-system-x86_64"
# Empty PCIe root ports so that virtio disks can be hot-plugged on q35.
DEFAULT_HOTPLUG_PORTS = 4


@dataclass(frozen=True)
class LaunchPaths:
    """Where QEMU puts its monitor, console and pid (all inside the VM's run dir)."""

    qmp_socket: Path
    serial_socket: Path
    serial_log: Path
    pidfile: Path


@dataclass(frozen=True)
class LaunchOptions:
    #: ``-accel ...`` (and ``-cpu ...``) as chosen by the accelerator probe.
    accel_args: tuple[str, ...] = ("-accel", "tcg")
    emulator: str = DEFAULT_EMULATOR
    hotplug_ports: int = DEFAULT_HOTPLUG_PORTS
    #: Start as a migration target (``-incoming defer``).
    incoming: bool = False


def opt_value(value: str) -> str:
    """``value`` made safe for one ``key=value`` slot of a QEMU option string."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise SpecError(f"value {value!r} holds control characters and cannot be passed to QEMU")
    return value.replace(",", ",,")


def hotplug_port_ids(count: int) -> list[str]:
    return [f"hp{i}" for i in range(count)]


def build_argv(
    spec: VmiSpec,
    disks: Sequence[AttachedDisk],
    paths: LaunchPaths,
    options: LaunchOptions,
) -> list[str]:
    """The full QEMU command line for ``spec`` (QEMU starts paused and daemonizes)."""
    argv = [options.emulator, *_machine(spec, options), *_control(paths)]
    argv += _ports(options.hotplug_ports)
    if any(a.disk.bus == "scsi" for a in disks):
        argv += ["-device", _json({"driver": "virtio-scsi-pci", "id": SCSI_CONTROLLER_ID})]
    for attached in disks:
        argv += ["-blockdev", _json(file_node(attached))]
        argv += ["-blockdev", _json(format_node(attached))]
        argv += ["-device", _json(device(attached))]
    # NICs after the disks so the disks keep their PCI slots.
    for iface in spec.interfaces:
        argv += ["-netdev", _json(netdev(iface)), "-device", _json(nic_device(iface))]
    if spec.kernel_boot is not None:
        kb = spec.kernel_boot
        argv += ["-kernel", str(kb.kernel)]
        if kb.initrd is not None:
            argv += ["-initrd", str(kb.initrd)]
        argv += ["-append", kb.cmdline]
    if options.incoming:
        argv += ["-incoming", "defer"]
    return argv


def _machine(spec: VmiSpec, options: LaunchOptions) -> list[str]:
    cpu = spec.cpu
    return [
        *("-name", f"guest={opt_value(spec.namespace)}_{opt_value(spec.name)}"),
        *("-machine", "q35", *options.accel_args),
        *("-smp", f"{cpu.vcpus},sockets={cpu.sockets},cores={cpu.cores},threads={cpu.threads}"),
        *("-m", f"{spec.memory_bytes // 2**20}M"),
        *("-nodefaults", "-no-user-config", "-display", "none"),
        # Keep QEMU alive after guest poweroff so the agent sees SHUTDOWN even
        # if it was down at that moment (query-status says "shutdown").
        "-no-shutdown",
        "-S",
    ]


def _control(paths: LaunchPaths) -> list[str]:
    """QMP and serial console on unix sockets (console also logged), daemonized."""
    qmp = opt_value(str(paths.qmp_socket))
    serial = opt_value(str(paths.serial_socket))
    log = opt_value(str(paths.serial_log))
    return [
        *("-chardev", f"socket,id=qmp,path={qmp},server=on,wait=off"),
        *("-mon", "chardev=qmp,mode=control"),
        "-chardev",
        f"socket,id=serial0,path={serial},server=on,wait=off,logfile={log},logappend=on",
        *("-device", "isa-serial,chardev=serial0"),
        *("-pidfile", str(paths.pidfile), "-daemonize"),
    ]


def _ports(count: int) -> list[str]:
    out: list[str] = []
    for index, port_id in enumerate(hotplug_port_ids(count)):
        port = {"driver": "pcie-root-port", "id": port_id, "bus": "pcie.0", "chassis": index + 1}
        out += ["-device", _json(port)]
    return out


def _json(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)
