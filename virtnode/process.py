"""QEMU as a detached process: launch (daemonized, own session), identity, exit watch, kill.

QEMU runs with ``-daemonize``: the launcher's child exits once QEMU is
initialised, so QEMU is never a child of the agent and survives the agent
being killed. A process is identified by pid *and* kernel start time (from
``/proc/<pid>/stat``) so a recycled pid is never mistaken for our QEMU.
Exit is noticed through a pidfd (readable the moment the process ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from virtnode.errors import LaunchError

# stderr kept from a QEMU that failed to start (bytes), for the error message.
STDERR_TAIL_BYTES = 2000


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    #: Clock ticks since boot when the process started (field 22 of /proc/<pid>/stat).
    start_ticks: int


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int
    #: Supplementary groups (the group owning /dev/kvm, when there is one).
    groups: tuple[int, ...] = ()


def start_ticks(pid: int) -> int | None:
    """The process's start time, or ``None`` when it does not exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after it follow the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_alive(identity: ProcessIdentity) -> bool:
    return start_ticks(identity.pid) == identity.start_ticks


async def launch(
    argv: Sequence[str], *, pidfile: Path, vm: str, limit: float, run_as: RunAs | None
) -> ProcessIdentity:
    """Start a daemonizing QEMU and return the daemon's identity once it is initialised."""
    pidfile.unlink(missing_ok=True)  # noqa: ASYNC240 - tiny, local
    extra = {}
    if run_as is not None:
        extra = {"user": run_as.uid, "group": run_as.gid, "extra_groups": list(run_as.groups)}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            **extra,  # type: ignore[arg-type]
        )
    except OSError as exc:
        raise LaunchError(f"could not run {argv[0]} for VM {vm}: {exc}") from exc
    try:
        async with asyncio.timeout(limit):
            _, err = await proc.communicate()
    except TimeoutError as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise LaunchError(f"QEMU for VM {vm} did not finish starting within {limit:g} s") from exc
    if proc.returncode != 0:
        detail = err[-STDERR_TAIL_BYTES:].decode(errors="replace").strip()
        raise LaunchError(f"QEMU for VM {vm} exited with {proc.returncode} at start: {detail}")
    return read_identity(pidfile, vm)


def read_identity(pidfile: Path, vm: str) -> ProcessIdentity:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError) as exc:
        raise LaunchError(f"QEMU for VM {vm} wrote no usable pidfile {pidfile}: {exc}") from exc
    ticks = start_ticks(pid)
    if ticks is None:
        raise LaunchError(f"QEMU for VM {vm} (pid {pid}) exited right after starting")
    return ProcessIdentity(pid, ticks)


async def wait_exit(identity: ProcessIdentity, poll_interval: float) -> None:
    """Return when the process has ended (immediately if it already has)."""
    try:
        fd = os.pidfd_open(identity.pid)
    except ProcessLookupError:
        return
    except OSError:
        fd = -1
    try:
        # The pid may have been recycled between our check and pidfd_open.
        if not is_alive(identity):
            return
        if fd < 0:
            while is_alive(identity):  # noqa: ASYNC110 - no pidfd, nothing to await
                await asyncio.sleep(poll_interval)
            return
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def _readable() -> None:
            if not ended.done():
                ended.set_result(None)

        loop.add_reader(fd, _readable)
        try:
            await ended
        finally:
            loop.remove_reader(fd)
    finally:
        if fd >= 0:
            os.close(fd)


def kill(identity: ProcessIdentity) -> None:
    """SIGKILL the process if it is still the one we started."""
    try:
        fd = os.pidfd_open(identity.pid)
    except ProcessLookupError:
        return
    try:
        if is_alive(identity):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)
