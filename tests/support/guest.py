"""The suite's test guest: the cached tiny guest and a helper that boots it under QEMU.

Fixtures:

- ``tiny_guest`` (session): :class:`virtnode.tinyguest.TinyGuest`, built once into the
  shared cache (``$DISKPLANE_CACHE_DIR`` or ``~/.cache/diskplane``) and reused after.
- ``guest_accel`` (session): the accelerator verdict of :func:`virtnode.accel.probe_accelerator`
  (cached on disk; TCG on this machine class).

Helper: ``async with boot_guest(guest, workdir, ...) as run:`` starts
``qemu-system-x86_64`` (``-nodefaults -no-user-config -display none``, console on a
pipe, QMP on a unix socket), ``await run.wait_for("DISKPLANE-GUEST READY")``,
``await run.powerdown()`` (ACPI power button), ``await run.wait_exit()``. QEMU is
always killed when the block ends. Each boot costs about 3-4 s (``style="kernel"``,
PVH boot of the uncompressed kernel) or 6-10 s (``style="disk"``, SeaBIOS + syslinux)
under TCG: mark such tests ``@pytest.mark.guest`` and keep them few.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
from qemu.qmp import QMPClient

from virtnode.accel import AccelChoice, probe_accelerator
from virtnode.tinyguest import TinyGuest, build_tiny_guest, kernel_cmdline

# How long one console line may take to appear (a TCG disk boot needs ~10 s).
LINE_TIMEOUT = 60.0
# How long QEMU may take to exit after the guest powers off.
EXIT_TIMEOUT = 30.0
# How long the QMP socket may take to accept the handshake.
QMP_TIMEOUT = 10.0
# Console lines kept in memory per boot (bounded).
MAX_CONSOLE_LINES = 10_000


@pytest.fixture(scope="session")
def tiny_guest() -> TinyGuest:
    return build_tiny_guest()


@pytest.fixture(scope="session")
def guest_accel() -> AccelChoice:
    # A private loop in a worker thread: asyncio.run here would reset the test loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, probe_accelerator()).result(timeout=120)


@dataclass
class GuestRun:
    """One running QEMU with the tiny guest; its console is read by a named task."""

    process: asyncio.subprocess.Process
    qmp_socket: Path
    console_log: Path
    lines: list[str] = field(default_factory=list)
    _cursor: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _eof: bool = False

    async def read_console(self) -> None:
        assert self.process.stdout is not None
        with self.console_log.open("a") as log:
            while True:
                raw = await self.process.stdout.readline()
                async with self._changed:
                    if not raw:
                        self._eof = True
                        self._changed.notify_all()
                        return
                    line = raw.decode(errors="replace").rstrip("\r\n")
                    log.write(line + "\n")
                    if len(self.lines) < MAX_CONSOLE_LINES:
                        self.lines.append(line)
                    self._changed.notify_all()

    async def wait_for(self, pattern: str, timeout: float = LINE_TIMEOUT) -> re.Match[str]:
        """The next console line (after the last match) that ``pattern`` (a regex) matches."""
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout), self._changed:
            while True:
                for index in range(self._cursor, len(self.lines)):
                    match = regex.search(self.lines[index])
                    if match:
                        self._cursor = index + 1
                        return match
                self._cursor = len(self.lines)
                if self._eof:
                    raise AssertionError(
                        f"QEMU's console ended without a line matching {pattern!r}; "
                        f"last lines: {self.lines[-8:]}"
                    )
                await self._changed.wait()

    async def powerdown(self) -> None:
        """Press the ACPI power button over QMP (the guest in mode=wait powers off)."""
        qmp = QMPClient("guest-test")
        async with asyncio.timeout(QMP_TIMEOUT):
            await qmp.connect(str(self.qmp_socket))
        try:
            await qmp.execute("system_powerdown")
        finally:
            await qmp.disconnect()

    async def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        async with asyncio.timeout(timeout):
            return await self.process.wait()


def _disk_args(disks: Sequence[Path], boot_first: bool) -> list[str]:
    args: list[str] = []
    for index, disk in enumerate(disks):
        fmt = "qcow2" if disk.suffix == ".qcow2" else "raw"
        read_only = ",readonly=on" if disk.suffix == ".iso" else ""
        args += ["-drive", f"if=none,id=d{index},file={disk},format={fmt}{read_only}"]
        boot = ",bootindex=0" if boot_first and index == 0 else ""
        args += ["-device", f"virtio-blk-pci,drive=d{index}{boot}"]
    return args


def guest_argv(
    guest: TinyGuest,
    qmp_socket: Path,
    *,
    style: Literal["kernel", "disk"],
    disks: Sequence[Path],
    mode: Literal["poweroff", "wait"] = "poweroff",
    markdev: str = "auto",
    accel: AccelChoice | None = None,
) -> list[str]:
    """The QEMU command line for one boot of the tiny guest."""
    argv = ["qemu-system-x86_64", "-machine", "pc", *(accel or AccelChoice("tcg", "")).qemu_args()]
    argv += ["-m", "256", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none"]
    argv += ["-no-reboot", "-serial", "stdio", "-qmp", f"unix:{qmp_socket},server=on,wait=off"]
    if style == "kernel":
        argv += ["-kernel", str(guest.vmlinux), "-initrd", str(guest.initrd)]
        argv += ["-append", kernel_cmdline(mode=mode, markdev=markdev)]
    return argv + _disk_args(disks, boot_first=style == "disk")


@contextlib.asynccontextmanager
async def boot_guest(
    guest: TinyGuest,
    workdir: Path,
    *,
    style: Literal["kernel", "disk"] = "kernel",
    disks: Sequence[Path] = (),
    mode: Literal["poweroff", "wait"] = "poweroff",
    markdev: str = "auto",
    accel: AccelChoice | None = None,
) -> AsyncIterator[GuestRun]:
    """Boot the tiny guest; the console goes to ``workdir/console.log`` as well.

    ``style="disk"`` boots ``disks[0]`` through SeaBIOS + syslinux (its default label,
    ``mode=wait``); ``mode`` and ``markdev`` only apply to ``style="kernel"``.
    """
    # A short socket dir: unix socket paths are limited to 107 bytes.
    sock_dir = Path(tempfile.mkdtemp(prefix="dpqmp-"))
    argv = guest_argv(
        guest,
        sock_dir / "qmp.sock",
        style=style,
        disks=disks,
        mode=mode,
        markdev=markdev,
        accel=accel,
    )
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    run = GuestRun(process, sock_dir / "qmp.sock", workdir / "console.log")
    reader = asyncio.create_task(run.read_console(), name=f"guest-console-{process.pid}")
    try:
        yield run
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        shutil.rmtree(sock_dir, ignore_errors=True)
