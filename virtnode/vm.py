"""One VM on this node: QEMU process + QMP session + console, and the VMI status they drive.

Lifecycle::

    create ─▶ Scheduled (disks prepared, QEMU started paused, -S) ─cont─▶ Running
    Running ─guest powers off (SHUTDOWN)─▶ quit ─▶ Succeeded
    Running ─stop: system_powerdown, grace, quit, kill─▶ Succeeded
    any ─QEMU exits without a SHUTDOWN─▶ Failed

Pausing keeps phase ``Running`` with condition ``Paused`` and printableStatus
``Paused``, as KubeVirt does. One monitor task per VM consumes QMP events and
the process's exit (noticed through a pidfd, at once); it owns the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from virtnode.blockdev import AttachedDisk
from virtnode.console import ConsoleHub
from virtnode.disks import ContainerDiskSource, DiskPreparer, stage_kernel
from virtnode.driver import Monitor, VmDriver
from virtnode.errors import QmpError, VmStateError
from virtnode.network import assign_host_ports, interface_status
from virtnode.ownership import grant
from virtnode.process import ProcessIdentity, RunAs, is_alive, kill, wait_exit
from virtnode.qmp import QmpEvent
from virtnode.rundir import RunDir
from virtnode.settings import AgentSettings
from virtnode.spec import VmiSpec
from virtnode.vmstate import restore_disks, state_of
from virtnode.vmstatus import printable_status, render_status
from virtnode.vmtypes import AccelInfo, Phase

log = logging.getLogger(__name__)

Publish = Callable[[dict[str, Any]], None]
LatencyObserver = Callable[[str, float], None]
# After QEMU exits, how long the monitor waits for the last QMP events to drain
# (normally milliseconds: the monitor socket closes with QEMU). Kept well under a
# second so the final phase follows QEMU's exit within one.
EVENT_DRAIN_TIMEOUT = 0.5


@dataclasses.dataclass
class NodeContext:
    """What every VM on the node shares."""

    settings: AgentSettings
    accel: AccelInfo
    run_as: RunAs | None
    publish: Publish
    observe_qmp: LatencyObserver
    driver: VmDriver
    containerdisks: ContainerDiskSource | None = None
    #: Called with ("succeeded"|"failed", stats) after each outgoing migration.
    record_migration: Callable[[str, Mapping[str, Any]], None] = lambda result, stats: None
    #: Called once when a VM reaches Succeeded/Failed (the agent persists it).
    on_finished: Callable[[VirtualMachine], None] = lambda vm: None


class VirtualMachine:
    def __init__(self, obj: Mapping[str, Any], spec: VmiSpec, run: RunDir, ctx: NodeContext):
        self.obj = dict(obj)
        self.spec = spec
        self.run = run
        self.ctx = ctx
        self.phase = Phase.PENDING
        self.paused = False
        self.reason = ""
        self.message = ""
        self.identity: ProcessIdentity | None = None
        self.qmp: Monitor | None = None
        self.console: ConsoleHub | None = None
        self.disks: dict[str, AttachedDisk] = {}
        self.hotplugged: dict[str, dict[str, Any]] = {}
        #: disk name -> active external snapshot {"file", "node"} (until committed)
        self.snapshots: dict[str, dict[str, str]] = {}
        self.extra: dict[str, Any] = {}  # migration state etc., shown in status
        self.started_at = time.time()
        self.finished = asyncio.Event()
        self.lock = asyncio.Lock()
        self._monitor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._shutdown_seen = asyncio.Event()
        self.stop_requested = False
        self._soft_reboot = False
        self._incoming = False
        self.accel = ctx.accel
        self.event_waiters: list[Callable[[QmpEvent], None]] = []

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def settings(self) -> AgentSettings:
        return self.ctx.settings

    # ----- status -------------------------------------------------------------------

    def printable_status(self) -> str:
        return printable_status(self)

    def status(self) -> dict[str, Any]:
        return render_status(self)

    def to_object(self) -> dict[str, Any]:
        obj = dict(self.obj)
        obj.setdefault("apiVersion", "kubevirt.io/v1")
        obj.setdefault("kind", "VirtualMachineInstance")
        obj["status"] = self.status()
        return obj

    def _set_phase(self, phase: Phase, reason: str = "", message: str = "") -> None:
        self.phase, self.reason, self.message = phase, reason, message
        self._publish_phase()

    def _publish_phase(self) -> None:
        self.ctx.publish(
            {
                "type": "phase",
                "vmi": self.key,
                "phase": self.phase.value,
                "printableStatus": self.printable_status(),
                "reason": self.reason,
            }
        )

    # ----- create / adopt -----------------------------------------------------------

    async def create(self, *, incoming: bool = False) -> None:
        """Prepare disks, start QEMU paused, connect, ``cont``. On failure: Failed, cleaned.

        ``incoming``: start as a migration target (``-incoming defer``) and stay
        ``Scheduled`` until :meth:`finish_incoming`.
        """
        self._incoming = incoming
        self.run.create()
        self.run.write_json(self.run.vmi_file, self.obj)
        try:
            await self._launch()
            if incoming:
                return
            await self._execute("cont")
        except BaseException as exc:
            await self._abort_start(exc)
            raise
        if self.phase is Phase.SCHEDULED:
            self._set_phase(Phase.RUNNING)

    async def _launch(self) -> None:
        ctx, run = self.ctx, self.run
        self._set_phase(Phase.SCHEDULED)
        grant(run.root, ctx.run_as)
        preparer = DiskPreparer(ctx.settings.volumes, run, ctx.run_as, ctx.containerdisks)
        attached = await preparer.prepare_all(self.spec)
        self.disks = {a.disk.name: a for a in attached}
        spec = await asyncio.to_thread(stage_kernel, self.spec, run, ctx.run_as)
        if ctx.driver.name == "qemu":  # the libvirt driver's domain XML has no NICs yet
            ifaces = await asyncio.to_thread(assign_host_ports, spec.interfaces)
            spec = dataclasses.replace(spec, interfaces=ifaces)
            self.extra["interfaces"] = interface_status(ifaces)
        self.identity = await ctx.driver.start(
            spec, attached, run, self.accel, incoming=self._incoming, run_as=ctx.run_as
        )
        self.save_state()
        await self._attach()

    async def _attach(self, adopting: bool = False) -> None:
        """Connect QMP and console, start the monitor."""
        paths = self.run.launch_paths
        self.qmp = self.ctx.driver.monitor(self.spec, self.run, self.ctx.observe_qmp)
        await self.qmp.connect()
        self.console = ConsoleHub(
            paths.serial_socket,
            paths.serial_log,
            vm=self.key,
            backlog_bytes=self.settings.console_backlog_bytes,
        )
        await self.console.start(seed_from_log=adopting)
        self._monitor = asyncio.create_task(self._run_monitor(), name=f"vm-monitor:{self.key}")

    async def _abort_start(
        self, exc: BaseException, reason: str = "FailedCreate", message: str = ""
    ) -> None:
        if self._monitor is not None:  # it would report the exit a second time
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
        if self.identity is not None:
            kill(self.identity)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.kill_timeout):
                    await wait_exit(self.identity, self.settings.exit_poll_interval)
        await self._detach()
        self.run.remove()
        self.identity = None
        self._set_phase(Phase.FAILED, reason, message or str(exc))
        self._finish()

    async def fail_adoption(self, exc: Exception) -> None:
        """A surviving QEMU that cannot be re-adopted is stopped and reported ``Failed``:
        left running, a new VMI of the same name would start a second QEMU on its disks."""
        await self._abort_start(
            exc,
            "AdoptFailed",
            f"could not re-adopt the running QEMU of VM {self.key} ({exc}); it was stopped",
        )

    def _finish(self) -> None:
        self.finished.set()
        self.ctx.on_finished(self)

    def finished_record(self) -> dict[str, Any]:
        """What :mod:`virtnode.finished` keeps of this VM once it ended."""
        return {
            "key": self.key,
            "vmi": self.obj,
            "phase": self.phase.value,
            "reason": self.reason,
            "message": self.message,
            "extra": {k: v for k, v in self.extra.items() if k != "migrating"},
            "accel": {"name": self.accel.accel, "reason": self.accel.reason},
            "startedAt": self.started_at,
        }

    def restore_finished(self, record: Mapping[str, Any]) -> None:
        """Become the finished VM ``record`` describes (a restarted agent's history)."""
        self.phase = Phase(str(record["phase"]))
        self.reason = str(record.get("reason", ""))
        self.message = str(record.get("message", ""))
        self.extra = dict(record.get("extra", {}))
        accel = record.get("accel", {})
        self.accel = AccelInfo(str(accel.get("name", "")), str(accel.get("reason", "")), ())
        self.started_at = float(record.get("startedAt", 0.0))
        self.finished.set()

    def save_state(self) -> None:
        self.run.write_json(self.run.state_file, state_of(self))

    async def adopt(self, state: Mapping[str, Any]) -> None:
        """Re-attach to a QEMU started by an earlier agent; report it if it died meanwhile."""
        self.identity = ProcessIdentity(int(state["pid"]), int(state["startTicks"]))
        accel = state.get("accel", {})
        self.accel = AccelInfo(
            accel=str(accel.get("name", "tcg")),
            reason=str(accel.get("reason", "")),
            qemu_args=tuple(accel.get("args", ())),
        )
        self.started_at = float(state.get("startedAt", time.time()))
        self.hotplugged = dict(state.get("hotplugged", {}))
        self.snapshots = dict(state.get("snapshots", {}))
        self.disks = restore_disks(self.spec, state)
        if state.get("interfaces"):
            self.extra["interfaces"] = list(state["interfaces"])
        if not is_alive(self.identity):
            self.identity = None
            self.run.remove()
            self._set_phase(Phase.FAILED, "QemuExitedWhileAgentDown", "QEMU was gone on restart")
            self._finish()
            return
        self._set_phase(Phase.SCHEDULED)
        await self._attach(adopting=True)
        status = str((await self._execute("query-status")).get("status", ""))
        if status == "shutdown":
            # The guest powered off while the agent was down (-no-shutdown kept QEMU).
            self._shutdown_seen.set()
            await self._quit_quietly()
            if not await self._wait(self.finished.wait(), self.settings.quit_timeout):
                kill(self.identity)
            return
        self.paused = status not in ("running", "inmigrate", "postmigrate")
        self._set_phase(Phase.RUNNING)

    # ----- monitor ------------------------------------------------------------------

    async def _run_monitor(self) -> None:
        assert self.identity is not None
        assert self.qmp is not None
        events = asyncio.create_task(self._consume_events(), name=f"vm-events:{self.key}")
        try:
            await wait_exit(self.identity, self.settings.exit_poll_interval)
            # asyncio.wait: a failed event task must not keep the VM from finishing.
            await asyncio.wait({events}, timeout=EVENT_DRAIN_TIMEOUT)
        finally:
            events.cancel()
            await asyncio.gather(events, return_exceptions=True)
        await self._on_exit()

    async def _consume_events(self) -> None:
        assert self.qmp is not None
        async for event in self.qmp.events():
            try:
                await self._handle_event(event)
            except Exception:  # one bad event must not stop phase tracking (not Cancelled)
                log.exception("VM %s: handling QMP event %s failed", self.key, event.name)

    async def _handle_event(self, event: QmpEvent) -> None:
        self.ctx.publish({"type": "qmp", "vmi": self.key, "event": event.name, "data": event.data})
        for waiter in list(self.event_waiters):
            waiter(event)
        if event.name == "SHUTDOWN":
            await self._on_shutdown(event)
        elif event.name == "STOP" and not self._shutdown_seen.is_set():
            self.paused = True
            self._publish_phase()
        elif event.name == "RESUME":
            self.paused = False
            if self.phase is Phase.SCHEDULED:
                self._set_phase(Phase.RUNNING)
            else:
                self._publish_phase()

    async def _on_shutdown(self, event: QmpEvent) -> None:
        guest = bool(event.data.get("guest", False))
        if guest and self._soft_reboot:
            self._soft_reboot = False
            await self._execute("system_reset")
            await self._execute("cont")
            return
        if guest:  # a host-side SHUTDOWN (our own quit) is not the guest powering off
            self._shutdown_seen.set()
            self._spawn_quit()

    def _spawn_quit(self) -> None:
        # -no-shutdown keeps QEMU alive after the guest powered off; end it now.
        task = asyncio.create_task(self._quit_quietly(), name=f"vm-quit:{self.key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _quit_quietly(self) -> None:
        with contextlib.suppress(QmpError):
            await self._execute("quit")

    async def _on_exit(self) -> None:
        await self._detach()
        self.run.remove()
        if self._shutdown_seen.is_set() or self.stop_requested:
            reason = "GuestShutdown" if self._shutdown_seen.is_set() else "Stopped"
            self._set_phase(Phase.SUCCEEDED, reason, "")
        elif self.extra.get("migrationState", {}).get("completed"):
            self._set_phase(Phase.SUCCEEDED, "Migrated", "the VM now runs on the target")
        else:
            self._set_phase(Phase.FAILED, "QemuExited", "QEMU exited without a guest shutdown")
        self.paused = False
        self.identity = None
        self._finish()

    async def _detach(self) -> None:
        if self.console is not None:
            await self.console.close()
        if self.qmp is not None:
            await self.qmp.close()

    async def release(self) -> None:
        """Let go of a running VM without stopping it (agent shutdown)."""
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._detach()

    # ----- actions ------------------------------------------------------------------

    async def _execute(self, command: str, args: Mapping[str, Any] | None = None) -> Any:
        if self.qmp is None:
            raise VmStateError(f"VM {self.key} has no QEMU monitor (phase {self.phase.value})")
        return await self.qmp.execute(command, args)

    async def finish_incoming(self) -> None:
        """The migration into this VM is complete: run the guest here."""
        if not self._incoming or self.phase is not Phase.SCHEDULED:
            raise VmStateError(f"VM {self.key} is not waiting for an incoming migration")
        await self._execute("cont")
        self._incoming = False
        self.paused = False
        self._set_phase(Phase.RUNNING)

    async def wait_finished(self, limit: float) -> None:
        """Wait until QEMU is gone and the final phase is set (``TimeoutError`` after ``limit``)."""
        async with asyncio.timeout(limit):
            await self.finished.wait()

    async def execute(self, command: str, args: Mapping[str, Any] | None = None) -> Any:
        """One QMP command on this VM's monitor (for volume operations and migration)."""
        return await self._execute(command, args)

    async def wait_event(
        self,
        predicate: Callable[[QmpEvent], bool],
        limit: float,
        start: Callable[[], Awaitable[Any]],
    ) -> QmpEvent:
        """Run ``start`` and wait for the first QMP event matching ``predicate`` after it."""
        event = await self._await_event(predicate, limit, start, None)
        assert event is not None
        return event

    async def wait_until(
        self,
        predicate: Callable[[QmpEvent], bool],
        limit: float,
        check: Callable[[], Awaitable[Any]],
        reached: Callable[[Any], bool],
    ) -> None:
        """Wait for an event matching ``predicate`` unless ``reached(await check())`` says
        the state was reached already (the waiter is registered before the check)."""
        await self._await_event(predicate, limit, check, reached)

    async def _await_event(
        self,
        predicate: Callable[[QmpEvent], bool],
        limit: float,
        start: Callable[[], Awaitable[Any]],
        already: Callable[[Any], bool] | None,
    ) -> QmpEvent | None:
        loop = asyncio.get_running_loop()
        seen: asyncio.Future[QmpEvent] = loop.create_future()

        def waiter(event: QmpEvent) -> None:
            if not seen.done() and predicate(event):
                seen.set_result(event)

        self.event_waiters.append(waiter)
        try:
            result = await start()
            if already is not None and already(result):
                return None
            async with asyncio.timeout(limit):
                return await seen
        finally:
            self.event_waiters.remove(waiter)

    def require_running(self, action: str) -> None:
        if self.phase is not Phase.RUNNING or self.identity is None:
            raise VmStateError(f"cannot {action} VM {self.key}: it is {self.phase.value}")

    async def pause(self) -> None:
        self.require_running("pause")
        await self._execute("stop")
        self.paused = True

    async def unpause(self) -> None:
        self.require_running("unpause")
        await self._execute("cont")
        self.paused = False

    async def reset(self) -> None:
        self.require_running("reset")
        await self._execute("system_reset")

    async def soft_reboot(self) -> None:
        """ACPI power button, then restart instead of exiting when the guest powers off."""
        self.require_running("soft-reboot")
        self._soft_reboot = True
        await self._execute("system_powerdown")

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: powerdown, wait ``grace`` for SHUTDOWN, then quit, then kill."""
        if self.finished.is_set():
            return
        self.stop_requested = True
        self._publish_phase()
        limit = self.spec.grace_period_s if grace is None else grace
        identity = self.identity
        with contextlib.suppress(QmpError, VmStateError):
            await self._execute("system_powerdown")
        if await self._wait(self._shutdown_seen.wait(), limit):
            await self._wait(self.finished.wait(), self.settings.quit_timeout)
        if not self.finished.is_set():
            with contextlib.suppress(QmpError, VmStateError):
                await self._execute("quit")
            await self._wait(self.finished.wait(), self.settings.quit_timeout)
        if not self.finished.is_set() and identity is not None:
            kill(identity)
            await self._wait(self.finished.wait(), self.settings.kill_timeout)

    @staticmethod
    async def _wait(awaitable: Any, limit: float) -> bool:
        try:
            async with asyncio.timeout(limit):
                await awaitable
            return True
        except TimeoutError:
            return False
