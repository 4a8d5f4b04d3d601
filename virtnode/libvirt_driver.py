"""The libvirt driver: transient libvirt domains, QMP passed through libvirt.

Chosen per node with ``AgentSettings.driver = "libvirt"`` (``--driver libvirt``).
Needs ``libvirt-python`` (``pip install 'diskplane[libvirt]'``) and a running
libvirtd (``virtlogd -d; libvirtd -d`` where there is no systemd); without them
:class:`~virtnode.errors.DriverUnavailableError` says which is missing.

The domain is defined from the same prepared disks as the QEMU driver (XML built
with ElementTree, so every value is escaped), started paused, and driven with
``virDomainQemuMonitorCommand`` (QMP passthrough, as KubeVirt does for a few
calls) plus ``qemuMonitorEventRegister`` for QMP events. libvirt runs QEMU as its
own user (``libvirt-qemu``) with dynamic ownership of the disks; the serial
console is a unix socket in the run dir, logged by virtlogd. Disk hotplug,
unplug, resize, snapshot, commit and copy go through libvirt
(``attachDeviceFlags``/``detachDeviceAlias``, ``blockResize``,
``snapshotCreateXML``, ``blockCommit``/``blockCopy`` + ``blockJobAbort(PIVOT)``), so
its live domain XML stays true; outgoing migration is QMP passthrough and incoming
migration is refused (docs/virtnode.md lists them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import pwd
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from virtnode.blockdev import AttachedDisk
from virtnode.errors import (
    DiskError,
    DriverUnavailableError,
    LaunchError,
    QmpCommandError,
    QmpConnectError,
    QmpDisconnectedError,
    QmpTimeoutError,
)
from virtnode.process import ProcessIdentity, RunAs, start_ticks
from virtnode.qmp import QmpEvent
from virtnode.rundir import RunDir
from virtnode.settings import AgentSettings
from virtnode.spec import VmiSpec
from virtnode.vmtypes import AccelInfo

LIBVIRT_USER = "libvirt-qemu"
PIDFILE_DIR = Path("/run/libvirt/qemu")
# How long libvirt may take to write the pidfile after createXML returned.
PIDFILE_TIMEOUT = 10.0
_event_loop_started = False
_event_lock = threading.Lock()


def domain_name(spec: VmiSpec) -> str:
    return "diskplane-" + hashlib.sha256(spec.key.encode()).hexdigest()[:16]


def domain_xml(
    spec: VmiSpec,
    disks: Sequence[AttachedDisk],
    run: RunDir,
    accel: str,
    hotplug_ports: int = 0,
) -> str:
    """The transient domain for ``spec`` (pure; every value goes through ElementTree)."""
    dom = ET.Element("domain", type="kvm" if accel == "kvm" else "qemu")
    ET.SubElement(dom, "name").text = domain_name(spec)
    ET.SubElement(dom, "memory", unit="MiB").text = str(spec.memory_bytes // 2**20)
    ET.SubElement(dom, "vcpu").text = str(spec.cpu.vcpus)
    cpu = ET.SubElement(dom, "cpu")
    ET.SubElement(
        cpu,
        "topology",
        sockets=str(spec.cpu.sockets),
        cores=str(spec.cpu.cores),
        threads=str(spec.cpu.threads),
    )
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="q35").text = "hvm"
    if spec.kernel_boot is not None:
        ET.SubElement(os_el, "kernel").text = str(spec.kernel_boot.kernel)
        if spec.kernel_boot.initrd is not None:
            ET.SubElement(os_el, "initrd").text = str(spec.kernel_boot.initrd)
        ET.SubElement(os_el, "cmdline").text = spec.kernel_boot.cmdline
    ET.SubElement(ET.SubElement(dom, "features"), "acpi")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    counters = {"virtio": 0, "sata": 0, "scsi": 0}
    for attached in disks:
        _disk(devices, attached, counters)
    serial = ET.SubElement(devices, "serial", type="unix")
    paths = run.launch_paths
    ET.SubElement(serial, "source", mode="bind", path=str(paths.serial_socket))
    ET.SubElement(serial, "log", file=str(paths.serial_log), append="on")
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "controller", type="usb", model="none")
    if hotplug_ports:  # libvirt adds root ports only for the devices it has
        ET.SubElement(devices, "controller", type="pci", index="0", model="pcie-root")
    for index in range(1, hotplug_ports + 1):
        ET.SubElement(devices, "controller", type="pci", index=str(index), model="pcie-root-port")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


def _disk(devices: ET.Element, attached: AttachedDisk, counters: dict[str, int]) -> None:
    bus = attached.disk.bus
    prefix = "vd" if bus == "virtio" else "sd"
    index = counters[bus] + (counters["sata"] if bus == "scsi" else 0)
    counters[bus] += 1
    devices.append(disk_element(attached, prefix + chr(ord("a") + index)))


def disk_element(attached: AttachedDisk, target_dev: str) -> ET.Element:
    """``<disk>`` for ``attached`` as guest device ``target_dev`` (domain and hotplug)."""
    disk = attached.disk
    el = ET.Element("disk", type="file", device=disk.kind)
    driver = {"name": "qemu", "type": attached.format}
    if disk.cache is not None:
        driver["cache"] = disk.cache
    if disk.io is not None:
        driver["io"] = disk.io
    ET.SubElement(el, "driver", driver)
    ET.SubElement(el, "source", file=str(attached.path))
    ET.SubElement(el, "target", dev=target_dev, bus=disk.bus)
    if attached.readonly:
        ET.SubElement(el, "readonly")
    if disk.serial is not None:
        ET.SubElement(el, "serial").text = disk.serial
    if disk.boot_order is not None:
        ET.SubElement(el, "boot", order=str(disk.boot_order))
    ET.SubElement(el, "alias", name=attached.device_id)
    return el


def free_virtio_dev(live_xml: str) -> str:
    """The first ``vdX`` name the live domain does not use yet."""
    root = ET.fromstring(live_xml)  # noqa: S314 (libvirtd's own XML, not user input)
    used = {t.get("dev") for t in root.iterfind("devices/disk/target")}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        if "vd" + letter not in used:
            return "vd" + letter
    raise DiskError("the domain has no free virtio disk name (vda..vdz are used)")


def _target_dev(live_xml: str, alias: str) -> str:
    """The guest device name (``vda``) of the disk with ``alias`` in the live XML."""
    root = ET.fromstring(live_xml)  # noqa: S314 (libvirtd's own XML, not user input)
    for disk in root.iterfind("devices/disk"):
        found = disk.find("alias")
        target = disk.find("target")
        if found is not None and target is not None and found.get("name") == alias:
            return str(target.get("dev"))
    raise DiskError(f"libvirt's domain has no disk with alias {alias}")


def _ensure_event_loop(libvirt: Any) -> None:
    """libvirt delivers events only while its default event loop runs (one per process)."""
    global _event_loop_started
    with _event_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


class LibvirtDriver:
    name = "libvirt"
    manages_devices = True

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self._libvirt: Any = None
        self._qemu: Any = None
        self.conn: Any = None

    async def open(self) -> None:
        try:
            import libvirt
            import libvirt_qemu
        except ImportError as exc:
            raise DriverUnavailableError(
                "the libvirt driver needs libvirt-python: pip install 'diskplane[libvirt]'"
            ) from exc
        self._libvirt, self._qemu = libvirt, libvirt_qemu
        _ensure_event_loop(libvirt)
        try:
            async with asyncio.timeout(self.settings.qmp.connect):
                self.conn = await asyncio.to_thread(libvirt.open, self.settings.libvirt_uri)
        except (libvirt.libvirtError, TimeoutError) as exc:
            raise DriverUnavailableError(
                f"libvirt at {self.settings.libvirt_uri} is not reachable ({exc}); start its "
                "daemons (virtlogd -d; libvirtd -d) or use the qemu driver"
            ) from exc

    def run_as(self, default: RunAs | None) -> RunAs | None:
        if default is None:
            return None
        try:
            entry = pwd.getpwnam(LIBVIRT_USER)
        except KeyError:
            return default
        return RunAs(uid=entry.pw_uid, gid=entry.pw_gid)

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
        if incoming:
            raise DriverUnavailableError("the libvirt driver cannot receive migrations yet")
        xml = domain_xml(spec, disks, run, accel.accel, self.settings.hotplug_ports)
        flags = self._libvirt.VIR_DOMAIN_START_PAUSED
        limit = self.settings.launch_timeout
        try:
            async with asyncio.timeout(limit):
                await asyncio.to_thread(self.conn.createXML, xml, flags)
        except TimeoutError as exc:
            raise LaunchError(f"libvirt did not start VM {spec.key} within {limit:g} s") from exc
        except self._libvirt.libvirtError as exc:
            raise DriverUnavailableError(f"libvirt refused VM {spec.key}: {exc}") from exc
        return await _domain_identity(domain_name(spec))

    def monitor(self, spec: VmiSpec, run: RunDir, observe: Any) -> LibvirtMonitor:
        return LibvirtMonitor(self, domain_name(spec), spec.key, observe)

    async def attach_disk(self, spec: VmiSpec, attached: AttachedDisk) -> None:
        def attach() -> None:
            dom = self.conn.lookupByName(domain_name(spec))
            dev = free_virtio_dev(dom.XMLDesc(0))
            xml = ET.tostring(disk_element(attached, dev), encoding="unicode")
            dom.attachDeviceFlags(xml, self._libvirt.VIR_DOMAIN_AFFECT_LIVE)

        await self._device_call(spec, attached, "attach", attach)

    async def detach_disk(self, spec: VmiSpec, attached: AttachedDisk) -> None:
        def detach() -> None:
            dom = self.conn.lookupByName(domain_name(spec))
            # Asynchronous: libvirt removes the block nodes once the guest lets go.
            dom.detachDeviceAlias(attached.device_id, self._libvirt.VIR_DOMAIN_AFFECT_LIVE)

        await self._device_call(spec, attached, "detach", detach)

    async def resize_disk(self, spec: VmiSpec, attached: AttachedDisk, size: int) -> None:
        def grow() -> None:
            dom = self.conn.lookupByName(domain_name(spec))
            flags = self._libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES
            dom.blockResize(str(attached.path), size, flags)

        await self._device_call(spec, attached, "resize", grow)

    async def snapshot_disk(self, spec: VmiSpec, attached: AttachedDisk, overlay: Path) -> None:
        """External disk-only snapshot onto ``overlay`` (created by the agent, reused)."""
        lv = self._libvirt

        def take() -> None:
            dom = self.conn.lookupByName(domain_name(spec))
            live = ET.fromstring(dom.XMLDesc(0))  # noqa: S314 (libvirtd's own XML)
            snap = ET.Element("domainsnapshot")
            disks = ET.SubElement(snap, "disks")
            for disk in live.iterfind("devices/disk"):
                dev = disk.find("target")
                alias = disk.find("alias")
                if dev is None or alias is None:
                    continue
                mine = alias.get("name") == attached.device_id
                el = ET.SubElement(
                    disks, "disk", name=str(dev.get("dev")), snapshot="external" if mine else "no"
                )
                if mine:
                    el.set("type", "file")
                    ET.SubElement(el, "driver", type="qcow2")
                    ET.SubElement(el, "source", file=str(overlay))
            flags = (
                lv.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
                | lv.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
                | lv.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
            )
            dom.snapshotCreateXML(ET.tostring(snap, encoding="unicode"), flags)

        await self._device_call(spec, attached, "snapshot", take)

    async def start_commit(self, spec: VmiSpec, attached: AttachedDisk) -> None:
        """Active block-commit of the snapshot into its base; ready is ``BLOCK_JOB_READY``."""
        lv = self._libvirt

        def commit(dom: Any, dev: str) -> None:
            dom.blockCommit(dev, None, None, 0, lv.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)

        await self._block_call(spec, attached, "commit", commit)

    async def start_copy(self, spec: VmiSpec, attached: AttachedDisk, target: Path) -> None:
        """Block copy onto the existing raw ``target``; ready is ``BLOCK_JOB_READY``."""
        lv = self._libvirt

        def copy(dom: Any, dev: str) -> None:
            dest = ET.Element("disk", type="file")
            ET.SubElement(dest, "driver", type="raw")
            ET.SubElement(dest, "source", file=str(target))
            xml = ET.tostring(dest, encoding="unicode")
            dom.blockCopy(dev, xml, None, lv.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT)

        await self._block_call(spec, attached, "copy", copy)

    async def pivot(self, spec: VmiSpec, attached: AttachedDisk) -> None:
        """End a ready commit/copy job by switching the guest to its result."""
        lv = self._libvirt

        def pivot(dom: Any, dev: str) -> None:
            dom.blockJobAbort(dev, lv.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)

        await self._block_call(spec, attached, "pivot", pivot)

    async def _block_call(
        self,
        spec: VmiSpec,
        attached: AttachedDisk,
        what: str,
        call: Callable[[Any, str], None],
    ) -> None:
        """``call(domain, target dev)`` for a block job on ``attached``'s disk."""

        def with_device() -> None:
            dom = self.conn.lookupByName(domain_name(spec))
            call(dom, _target_dev(dom.XMLDesc(0), attached.device_id))

        await self._device_call(spec, attached, what, with_device)

    async def _device_call(
        self, spec: VmiSpec, attached: AttachedDisk, what: str, call: Callable[[], None]
    ) -> None:
        limit = self.settings.qmp.block
        try:
            async with asyncio.timeout(limit):
                await asyncio.to_thread(call)
        except TimeoutError as exc:
            raise DiskError(
                f"libvirt did not {what} disk {attached.disk.name!r} of VM {spec.key} "
                f"within {limit:g} s"
            ) from exc
        except self._libvirt.libvirtError as exc:
            raise DiskError(
                f"libvirt could not {what} disk {attached.disk.name!r} of VM {spec.key}: {exc}"
            ) from exc

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(self._libvirt.libvirtError, TimeoutError):
                async with asyncio.timeout(self.settings.qmp.command):
                    await asyncio.to_thread(self.conn.close)
            self.conn = None


async def _domain_identity(name: str) -> ProcessIdentity:
    pidfile = PIDFILE_DIR / f"{name}.pid"
    deadline = time.monotonic() + PIDFILE_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            ticks = start_ticks(pid)
            if ticks is not None:
                return ProcessIdentity(pid, ticks)
        await asyncio.sleep(0.05)
    raise DriverUnavailableError(f"libvirt wrote no usable pidfile {pidfile}")


class LibvirtMonitor:
    """QMP over libvirt: ``qemuMonitorCommand`` for commands, monitor events from libvirt."""

    def __init__(self, driver: LibvirtDriver, domain: str, vm: str, observe: Any) -> None:
        self._driver = driver
        self._name = domain
        self._vm = vm
        self._observe = observe
        self._dom: Any = None
        self._callbacks: list[int] = []
        self._lifecycle: int | None = None
        self._events: asyncio.Queue[QmpEvent | None] = asyncio.Queue(
            driver.settings.event_queue_size
        )
        self.dropped_events = 0

    async def connect(self, limit: float | None = None) -> None:
        lv, conn = self._driver._libvirt, self._driver.conn
        loop = asyncio.get_running_loop()

        def on_qmp(
            _c: Any, _d: Any, event: str, secs: int, micros: int, details: Any, _o: Any
        ) -> None:
            data = json.loads(details) if isinstance(details, str) and details else {}
            loop.call_soon_threadsafe(self._offer, QmpEvent(event, data, secs + micros / 1e6))

        def on_life(_c: Any, _d: Any, event: int, _detail: int, _o: Any) -> None:
            if event == lv.VIR_DOMAIN_EVENT_STOPPED:
                loop.call_soon_threadsafe(self._offer, None)

        def register() -> None:  # blocking libvirt calls: off the event loop
            self._dom = conn.lookupByName(self._name)
            self._callbacks.append(
                self._driver._qemu.qemuMonitorEventRegister(conn, self._dom, None, on_qmp, None, 0)
            )
            self._lifecycle = conn.domainEventRegisterAny(
                self._dom, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_life, None
            )

        limit = limit or self._driver.settings.qmp.connect
        try:
            async with asyncio.timeout(limit):
                await asyncio.to_thread(register)
        except TimeoutError as exc:
            raise QmpConnectError(
                f"libvirt did not connect the monitor of VM {self._vm} within {limit:g} s"
            ) from exc
        except lv.libvirtError as exc:
            raise QmpDisconnectedError(f"libvirt has no domain for VM {self._vm}: {exc}") from exc

    def _offer(self, event: QmpEvent | None) -> None:
        if self._events.full():
            self._events.get_nowait()
            self.dropped_events += 1
        self._events.put_nowait(event)

    async def events(self) -> AsyncIterator[QmpEvent]:
        while (event := await self._events.get()) is not None:
            yield event

    async def execute(
        self, command: str, arguments: Mapping[str, Any] | None = None, limit: float | None = None
    ) -> Any:
        if self._dom is None:
            raise QmpDisconnectedError(f"the libvirt monitor of VM {self._vm} is not connected")
        message = json.dumps(
            {"execute": command, **({"arguments": dict(arguments)} if arguments else {})}
        )
        limit = limit or self._driver.settings.qmp.command
        started = time.monotonic()
        call = asyncio.to_thread(self._driver._qemu.qemuMonitorCommand, self._dom, message, 0)
        try:
            async with asyncio.timeout(limit):
                reply = json.loads(await call)
        except TimeoutError as exc:
            raise QmpTimeoutError(
                f"QMP {command!r} on VM {self._vm} took over {limit:g} s"
            ) from exc
        except self._driver._libvirt.libvirtError as exc:
            raise QmpDisconnectedError(
                f"libvirt could not pass {command!r} to VM {self._vm}: {exc}"
            ) from exc
        if "error" in reply:
            err = reply["error"]
            raise QmpCommandError(
                f"QEMU refused {command!r} on VM {self._vm}: {err.get('desc')}",
                str(err.get("class")),
            )
        if self._observe is not None:
            self._observe(command, time.monotonic() - started)
        return reply.get("return")

    async def close(self) -> None:
        conn = self._driver.conn
        if conn is None:
            return
        callbacks, self._callbacks = list(self._callbacks), []
        lifecycle, self._lifecycle = self._lifecycle, None

        def deregister() -> None:
            for callback in callbacks:
                self._driver._qemu.qemuMonitorEventDeregister(conn, callback)
            if lifecycle is not None:
                conn.domainEventDeregisterAny(lifecycle)

        with contextlib.suppress(self._driver._libvirt.libvirtError, TimeoutError):
            async with asyncio.timeout(self._driver.settings.qmp.command):
                await asyncio.to_thread(deregister)
        self._offer(None)
