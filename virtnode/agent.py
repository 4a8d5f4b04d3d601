"""The node agent: owns every VM on this node, re-adopts survivors on start.

On :meth:`NodeAgent.start` it scans ``<data_dir>/run``: a run dir whose QEMU
still runs is re-adopted (QMP and console reconnected, nothing restarted); one
whose QEMU is gone is reported ``Failed`` and removed; one without a readable
``vmi.json``/``state.json`` (an agent killed mid-create) is stale and removed.
:meth:`NodeAgent.close` lets go of running VMs without stopping them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from virtnode.containerdisks import NodeDiskCache
from virtnode.disks import ContainerDiskSource
from virtnode.driver import QemuDriver, VmDriver
from virtnode.errors import (
    LaunchError,
    SpecError,
    VirtnodeError,
    VmExistsError,
    VmNotFoundError,
    name_vmi,
)
from virtnode.events import EventBus
from virtnode.finished import FinishedRecords
from virtnode.metrics import AgentMetrics
from virtnode.ownership import check_reachable, qemu_run_as
from virtnode.process import ProcessIdentity, RunAs, kill, start_ticks
from virtnode.rundir import RunDir, existing_run_dirs
from virtnode.settings import ACCEL_ENV, AgentSettings
from virtnode.spec import parse_vmi
from virtnode.vm import NodeContext, VirtualMachine
from virtnode.vmtypes import AccelInfo

log = logging.getLogger(__name__)


async def choose_accelerator(settings: AgentSettings) -> AccelInfo:
    """``$DISKPLANE_ACCEL`` (kvm|tcg) if set, else the real-boot probe's verdict."""
    forced = os.environ.get(ACCEL_ENV)
    if forced in ("kvm", "tcg"):
        args = ("-accel", "kvm", "-cpu", "host") if forced == "kvm" else ("-accel", "tcg")
        return AccelInfo(forced, f"{forced.upper()} chosen by ${ACCEL_ENV}", args)
    from virtnode.accel import probe_accelerator

    choice = await probe_accelerator(emulator=settings.emulator)
    return AccelInfo(choice.accel, choice.reason, tuple(choice.qemu_args()))


async def make_driver(settings: AgentSettings) -> VmDriver:
    """The VM driver the settings name (``qemu`` or ``libvirt``)."""
    if settings.driver == "libvirt":
        from virtnode.libvirt_driver import LibvirtDriver

        driver = LibvirtDriver(settings)
        await driver.open()
        return driver
    return QemuDriver(settings)


def _key_of(obj: Mapping[str, Any]) -> str:
    """``ns/name`` of a VMI object as sent (for messages about an invalid one)."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or '(unnamed)'}"


def kill_orphan(run: RunDir) -> None:
    """An agent killed between QEMU's start and state.json leaves a QEMU nobody owns."""
    try:
        pid = int(run.launch_paths.pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    ticks = start_ticks(pid)
    if ticks is not None and str(run.launch_paths.qmp_socket).encode() in cmdline:
        log.warning("killing QEMU pid %d left by an interrupted create in %s", pid, run.root)
        kill(ProcessIdentity(pid, ticks))


class NodeAgent:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        accel: AccelInfo | None = None,
        containerdisks: ContainerDiskSource | None = None,
    ) -> None:
        self.settings = settings
        self.events = EventBus()
        self.metrics = AgentMetrics()
        self.vms: dict[str, VirtualMachine] = {}
        self._accel = accel
        self._containerdisks = containerdisks
        self._ctx: NodeContext | None = None
        self.qemu_user_note = ""
        self.finished_records = FinishedRecords(
            settings.finished_dir, settings.finished_keep_count, settings.finished_keep_seconds
        )

    @property
    def ctx(self) -> NodeContext:
        if self._ctx is None:
            raise RuntimeError("the node agent was not started")
        return self._ctx

    async def start(self) -> None:
        s = self.settings
        for path in (s.run_dir, s.volumes):
            path.mkdir(parents=True, exist_ok=True)
        s.run_dir.chmod(0o711)  # QEMU's user must reach its own run dir, not list others
        driver = await make_driver(s)
        run_as = driver.run_as(await asyncio.to_thread(qemu_run_as, s.qemu_user, s.qemu_uid))
        run_as = self._reachable_as(run_as)
        accel = self._accel or await choose_accelerator(s)
        self._ctx = NodeContext(
            settings=s,
            accel=accel,
            run_as=run_as,
            publish=self.events.publish,
            observe_qmp=self.metrics.observe_qmp,
            driver=driver,
            record_migration=self.metrics.record_migration,
            containerdisks=self._containerdisks or NodeDiskCache(s.cache_dir),
            on_finished=self._on_finished,
        )
        for record in await asyncio.to_thread(self.finished_records.load):
            self._restore_finished(record)
        for run in existing_run_dirs(s.run_dir):
            await self._adopt(run)

    def _reachable_as(self, run_as: RunAs | None) -> RunAs | None:
        """Fall back to the agent's own user when uid 107 cannot reach the data dir at all.

        The usual cause is a data dir under root's home (0700); the fallback keeps the
        node working and says so in /healthz and every VMI status (``qemu.user``).
        """
        self.qemu_user_note = "QEMU runs as the agent's user (the agent is not root)"
        if run_as is None:
            return None
        try:
            for path in (self.settings.run_dir, self.settings.volumes):
                check_reachable(path / "probe", run_as)
        except LaunchError as exc:
            self.qemu_user_note = f"QEMU runs as root: {exc}"
            log.warning("%s", self.qemu_user_note)
            return None
        self.qemu_user_note = f"QEMU runs as uid {run_as.uid} (gid {run_as.gid})"
        return run_as

    def _restore_finished(self, record: Mapping[str, Any]) -> None:
        try:
            spec = parse_vmi(record["vmi"])
            run = RunDir.for_vm(self.settings.run_dir, spec.namespace, spec.name)
            vm = VirtualMachine(record["vmi"], spec, run, self.ctx)
            vm.restore_finished(record)
        except (KeyError, ValueError, TypeError, SpecError) as exc:
            log.warning("ignoring finished-VMI record %s: %s", record.get("key"), exc)
            return
        self.vms[vm.key] = vm

    def _on_finished(self, vm: VirtualMachine) -> None:
        """Persist a VM that just ended; forget finished VMs pruned by age or count."""
        try:
            pruned = self.finished_records.save(
                vm.spec.namespace, vm.spec.name, vm.finished_record()
            )
        except OSError as exc:
            log.warning("VM %s: could not record its final status: %s", vm.key, exc)
            return
        for key in pruned:
            old = self.vms.get(key)
            if old is not None and old is not vm and old.finished.is_set():
                del self.vms[key]

    async def _adopt(self, run: RunDir) -> None:
        try:
            obj = run.read_json(run.vmi_file)
            state = run.read_json(run.state_file)
            spec = parse_vmi(obj)
        except (OSError, ValueError, SpecError) as exc:
            log.warning("removing stale run dir %s: %s", run.root, exc)
            kill_orphan(run)
            run.remove()
            return
        vm = VirtualMachine(obj, spec, run, self.ctx)
        self.vms[spec.key] = vm
        try:
            await vm.adopt(state)
        except Exception as exc:  # one broken VM must not stop the agent from starting
            log.warning("could not re-adopt VM %s: %s", spec.key, exc)
            await vm.fail_adoption(exc)

    async def close(self) -> None:
        """Release every VM (QEMU keeps running) and end event streams."""
        for vm in list(self.vms.values()):
            await vm.release()
        self.events.close()
        if self._ctx is not None:
            await self._ctx.driver.close()

    async def create(self, obj: Mapping[str, Any], *, incoming: bool = False) -> VirtualMachine:
        try:
            return await self._create(obj, incoming)
        except VirtnodeError as exc:
            name_vmi(exc, _key_of(obj))
            raise

    async def _create(self, obj: Mapping[str, Any], incoming: bool) -> VirtualMachine:
        spec = parse_vmi(obj)
        old = self.vms.get(spec.key)
        if old is not None and not old.finished.is_set():
            raise VmExistsError(f"VMI {spec.key} already exists on this node")
        run = RunDir.for_vm(self.settings.run_dir, spec.namespace, spec.name)
        run.remove()  # a finished VM's leftovers
        self.finished_records.remove(spec.namespace, spec.name)
        vm = VirtualMachine(obj, spec, run, self.ctx)
        self.vms[spec.key] = vm
        await vm.create(incoming=incoming)
        return vm

    def get(self, namespace: str, name: str) -> VirtualMachine:
        vm = self.vms.get(f"{namespace}/{name}")
        if vm is None:
            raise VmNotFoundError(f"VMI {namespace}/{name} does not exist on this node")
        return vm

    def list(self, namespace: str | None = None) -> list[VirtualMachine]:
        return [vm for vm in self.vms.values() if namespace in (None, vm.spec.namespace)]

    async def delete(self, namespace: str, name: str, grace: float | None = None) -> None:
        vm = self.get(namespace, name)
        await vm.stop(grace)
        await vm.release()
        self.vms.pop(vm.key, None)
        self.finished_records.remove(namespace, name)
        self.events.publish({"type": "deleted", "vmi": vm.key})

    def render_metrics(self) -> str:
        return self.metrics.render(vm.phase.value for vm in self.vms.values())
