"""The part of a KubeVirt ``VirtualMachineInstance`` this agent runs, parsed and validated.

Input is the VMI object as a dict (``kubevirt.io/v1`` field names), output a
frozen :class:`VmiSpec`. Everything that later becomes part of a QEMU argv is
checked here: names are DNS labels, numbers are bounded integers, free text
(kernel args, disk serials) is restricted to safe characters.

Supported volume sources: ``persistentVolumeClaim``, ``dataVolume``,
``emptyDisk``, ``cloudInitNoCloud`` and ``containerDisk``. diskplane
extension: ``spec.domain.firmware.kernelBoot.host`` (``kernelPath``,
``initrdPath``) boots a kernel file from the host, the way KubeVirt's
``kernelBoot.container`` boots one from an image. NICs (``interfaces`` /
``networks``) are parsed by :mod:`virtnode.network`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from virtnode.errors import SpecError
from virtnode.fields import as_list, as_mapping
from virtnode.network import Interface, parse_interfaces

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# virtio-blk serials are at most 20 bytes; keep them to characters QEMU never interprets.
SERIAL = re.compile(r"^[A-Za-z0-9._-]{1,20}$")
# Kernel command lines: printable ASCII without quotes or backslashes.
KERNEL_ARGS = re.compile(r"^[A-Za-z0-9 _.,:=/+@%-]{0,2048}$")

_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
_QUANTITY = re.compile(r"^([0-9]+)(|k|M|G|T|Ki|Mi|Gi|Ti)$")

MAX_MEMORY = 64 * 2**30
MIN_MEMORY = 16 * 2**20
MAX_VCPUS = 64
DEFAULT_GRACE_PERIOD_S = 30

Bus = Literal["virtio", "sata", "scsi"]
DeviceKind = Literal["disk", "cdrom"]
Cache = Literal["none", "writethrough", "writeback"]
Io = Literal["native", "threads"]
VolumeKind = Literal[
    "persistentVolumeClaim", "dataVolume", "emptyDisk", "cloudInitNoCloud", "containerDisk"
]
VOLUME_KINDS: tuple[VolumeKind, ...] = (
    "persistentVolumeClaim",
    "dataVolume",
    "emptyDisk",
    "cloudInitNoCloud",
    "containerDisk",
)


def parse_quantity(value: object, what: str) -> int:
    """A Kubernetes quantity (``256Mi``, ``1G``, ``1048576``) in bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _QUANTITY.match(str(value)) if isinstance(value, str) else None
    if match is None:
        raise SpecError(f"{what} {value!r} is not a quantity like '256Mi' or '1Gi'")
    return int(match.group(1)) * _SUFFIXES[match.group(2)]


@dataclass(frozen=True)
class CpuTopology:
    sockets: int = 1
    cores: int = 1
    threads: int = 1

    @property
    def vcpus(self) -> int:
        return self.sockets * self.cores * self.threads


@dataclass(frozen=True)
class Disk:
    """One entry of ``domain.devices.disks``."""

    name: str
    kind: DeviceKind = "disk"
    bus: Bus = "virtio"
    boot_order: int | None = None
    cache: Cache | None = None
    io: Io | None = None
    serial: str | None = None
    readonly: bool = False


@dataclass(frozen=True)
class Volume:
    """One entry of ``volumes``; ``source`` holds the chosen source's fields."""

    name: str
    kind: VolumeKind
    source: Mapping[str, Any] = field(default_factory=dict)

    @property
    def claim_name(self) -> str:
        """The volume in the pool that backs a PVC or DataVolume source."""
        key = "claimName" if self.kind == "persistentVolumeClaim" else "name"
        return str(self.source[key])


@dataclass(frozen=True)
class KernelBoot:
    kernel: Path
    initrd: Path | None
    cmdline: str


@dataclass(frozen=True)
class VmiSpec:
    namespace: str
    name: str
    cpu: CpuTopology
    memory_bytes: int
    disks: tuple[Disk, ...]
    volumes: tuple[Volume, ...]
    kernel_boot: KernelBoot | None = None
    grace_period_s: int = DEFAULT_GRACE_PERIOD_S
    interfaces: tuple[Interface, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def volume(self, name: str) -> Volume:
        for volume in self.volumes:
            if volume.name == name:
                return volume
        raise SpecError(f"VMI {self.key} has no volume named {name!r}")


def parse_vmi(obj: Mapping[str, Any]) -> VmiSpec:
    """Validate a ``VirtualMachineInstance`` dict and return its :class:`VmiSpec`."""
    meta = as_mapping(obj.get("metadata", {}), "metadata")
    name = _name(meta.get("name"), "metadata.name", DNS_SUBDOMAIN)
    namespace = _name(meta.get("namespace", "default"), "metadata.namespace", DNS_LABEL)
    spec = as_mapping(obj.get("spec"), "spec")
    domain = as_mapping(spec.get("domain"), "spec.domain")
    volumes = tuple(parse_volume(v) for v in as_list(spec.get("volumes", []), "spec.volumes"))
    devices = as_mapping(domain.get("devices", {}), "spec.domain.devices")
    disks = [parse_disk(d) for d in as_list(devices.get("disks", []), "spec.domain.devices.disks")]
    _check_unique([d.name for d in disks], "disk")
    _check_unique([v.name for v in volumes], "volume")
    volume_names = {v.name for v in volumes}
    for disk in disks:
        if disk.name not in volume_names:
            raise SpecError(f"disk {disk.name!r} has no volume of the same name")
    disk_names = {d.name for d in disks}
    # KubeVirt auto-attaches a virtio disk for a volume that names no disk.
    disks += [Disk(name=v.name) for v in volumes if v.name not in disk_names]
    grace = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_PERIOD_S)
    uid = meta.get("uid") or f"{namespace}/{name}"
    return VmiSpec(
        namespace=namespace,
        name=name,
        cpu=_cpu(as_mapping(domain.get("cpu", {}), "spec.domain.cpu")),
        memory_bytes=_memory(domain),
        disks=tuple(disks),
        volumes=volumes,
        kernel_boot=_kernel_boot(domain),
        grace_period_s=_int(grace, "spec.terminationGracePeriodSeconds", 0, 3600),
        interfaces=parse_interfaces(spec, devices, str(uid)),
    )


def parse_disk(raw: object) -> Disk:
    """One ``domain.devices.disks`` entry (also used for hotplug requests)."""
    d = as_mapping(raw, "disk")
    name = _name(d.get("name"), "disk name", DNS_LABEL)
    where = f"disk {name!r}"
    if "lun" in d:
        raise SpecError(f"{where}: lun devices are not supported; use disk or cdrom")
    kind: DeviceKind = "cdrom" if "cdrom" in d else "disk"
    device = as_mapping(d.get(kind) or {}, f"{where} {kind}")
    bus = device.get("bus", "sata" if kind == "cdrom" else "virtio")
    if bus not in ("virtio", "sata", "scsi"):
        raise SpecError(f"{where}: bus {bus!r} is not one of virtio, sata, scsi")
    if kind == "cdrom" and bus == "virtio":
        raise SpecError(f"{where}: a cdrom needs bus sata or scsi")
    boot = d.get("bootOrder")
    cache, io = d.get("cache"), d.get("io")
    if cache not in (None, "none", "writethrough", "writeback"):
        raise SpecError(f"{where}: cache {cache!r} is not one of none, writethrough, writeback")
    if io not in (None, "native", "threads"):
        raise SpecError(f"{where}: io {io!r} is not one of native, threads")
    if io == "native" and cache not in (None, "none"):
        raise SpecError(f"{where}: io native needs cache none")
    serial = d.get("serial")
    if serial is not None and (not isinstance(serial, str) or not SERIAL.match(serial)):
        raise SpecError(f"{where}: serial must be 1-20 characters of A-Z a-z 0-9 . _ -")
    return Disk(
        name=name,
        kind=kind,
        bus=bus,
        boot_order=None if boot is None else _int(boot, f"{where} bootOrder", 1, 1000),
        cache=cache,
        io=io,
        serial=serial,
        readonly=kind == "cdrom" or bool(device.get("readonly", False)),
    )


def parse_volume(raw: object) -> Volume:
    """One ``volumes`` entry (also used for hotplug requests)."""
    v = as_mapping(raw, "volume")
    name = _name(v.get("name"), "volume name", DNS_LABEL)
    kinds = [k for k in VOLUME_KINDS if k in v]
    others = sorted(set(v) - {"name", *VOLUME_KINDS})
    if others:
        raise SpecError(f"volume {name!r}: source {others[0]!r} is not supported here")
    if len(kinds) != 1:
        raise SpecError(f"volume {name!r} must name exactly one source, not {len(kinds)}")
    kind = kinds[0]
    source = dict(as_mapping(v[kind] or {}, f"volume {name!r} {kind}"))
    if kind == "persistentVolumeClaim":
        _name(source.get("claimName"), f"volume {name!r} claimName", DNS_SUBDOMAIN)
    elif kind == "dataVolume":
        _name(source.get("name"), f"volume {name!r} dataVolume name", DNS_SUBDOMAIN)
    elif kind == "emptyDisk":
        size = parse_quantity(source.get("capacity"), f"volume {name!r} emptyDisk capacity")
        if not 0 < size <= 2**44:
            raise SpecError(f"volume {name!r}: emptyDisk capacity must be between 1 and 16Ti")
    elif kind == "containerDisk" and not isinstance(source.get("image"), str):
        raise SpecError(f"volume {name!r}: containerDisk needs an image reference")
    elif kind == "cloudInitNoCloud" and "secretRef" in source:
        raise SpecError(f"volume {name!r}: cloudInitNoCloud secretRef is not supported")
    return Volume(name=name, kind=kind, source=source)


def _cpu(cpu: Mapping[str, Any]) -> CpuTopology:
    topo = CpuTopology(
        sockets=_int(cpu.get("sockets", 1), "spec.domain.cpu.sockets", 1, MAX_VCPUS),
        cores=_int(cpu.get("cores", 1), "spec.domain.cpu.cores", 1, MAX_VCPUS),
        threads=_int(cpu.get("threads", 1), "spec.domain.cpu.threads", 1, MAX_VCPUS),
    )
    if topo.vcpus > MAX_VCPUS:
        raise SpecError(f"the VMI asks for {topo.vcpus} vCPUs; at most {MAX_VCPUS} are allowed")
    return topo


def _memory(domain: Mapping[str, Any]) -> int:
    guest = as_mapping(domain.get("memory", {}), "spec.domain.memory").get("guest")
    resources = as_mapping(domain.get("resources", {}), "spec.domain.resources")
    request = as_mapping(resources.get("requests", {}), "resources.requests").get("memory")
    value = guest if guest is not None else request
    if value is None:
        raise SpecError("set spec.domain.memory.guest or spec.domain.resources.requests.memory")
    size = parse_quantity(value, "guest memory")
    if not MIN_MEMORY <= size <= MAX_MEMORY:
        raise SpecError(f"guest memory {value!r} must be between 16Mi and 64Gi")
    return size - size % 2**20


def _kernel_boot(domain: Mapping[str, Any]) -> KernelBoot | None:
    firmware = as_mapping(domain.get("firmware", {}), "spec.domain.firmware")
    if "kernelBoot" not in firmware:
        return None
    kb = as_mapping(firmware["kernelBoot"], "kernelBoot")
    if "container" in kb:
        raise SpecError("kernelBoot.container is not supported; use kernelBoot.host")
    host = as_mapping(kb.get("host"), "kernelBoot.host")
    args = kb.get("kernelArgs", "")
    if not isinstance(args, str) or not KERNEL_ARGS.match(args):
        raise SpecError(
            "kernelBoot.kernelArgs may hold only letters, digits, spaces and _.,:=/+@%-"
        )
    initrd = host.get("initrdPath")
    return KernelBoot(
        kernel=_host_file(host.get("kernelPath"), "kernelBoot.host.kernelPath"),
        initrd=None if initrd is None else _host_file(initrd, "kernelBoot.host.initrdPath"),
        cmdline=args,
    )


def _host_file(value: object, what: str) -> Path:
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
        raise SpecError(f"{what} must be an absolute path")
    path = Path(value)
    if not path.is_file():
        raise SpecError(f"{what} {value} is not a file on this node")
    return path


def _name(value: object, what: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or len(value) > 253 or not pattern.match(value):
        raise SpecError(f"{what} {value!r} must be a lowercase DNS name (a-z, 0-9, '-')")
    return value


def _int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(f"{what} must be an integer between {low} and {high}, not {value!r}")
    return value


def _check_unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SpecError(f"{what} name {name!r} is used twice")
        seen.add(name)
