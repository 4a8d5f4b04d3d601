"""KVM or TCG? Decided by a real boot, because ``/dev/kvm`` existing proves little.

On some hosts ``/dev/kvm`` is served by a paravirtual hypervisor (PVM) that cannot
run stock kernels: QEMU with ``-cpu host`` aborts at once and the default CPU never
gets past the kernel. So :func:`probe_accelerator` boots the tiny guest
(:mod:`virtnode.tinyguest`, uncompressed kernel, ``mode=poweroff``) under
``-accel kvm -cpu host`` with a short timeout and looks for its ready line. A real
KVM host boots it in about a second.

The verdict of a boot is cached in ``<cache>/accel/`` keyed by the host kernel
release, the QEMU binary and its version, so the node agent and ``diskplane doctor``
pay for it once; ``refresh=True`` probes again. Verdicts that need no boot
(no ``/dev/kvm``, not openable) are cheap and never cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from virtnode.errors import LaunchError
from virtnode.tinyguest import GuestBuildError, build_tiny_guest, default_cache_dir, kernel_cmdline

__all__ = [
    "DEFAULT_EMULATOR",
    "KVM_DEVICE",
    "KVM_PROBE_TIMEOUT_S",
    "AccelChoice",
    "probe_accelerator",
    "qemu_version",
]

Accel = Literal["kvm", "tcg"]

DEFAULT_EMULATOR = "qemu-system-x86_64"
KVM_DEVICE = Path("/dev/kvm")
# How long the probe guest may take to print its ready line under KVM (real KVM: ~1 s).
KVM_PROBE_TIMEOUT_S = 10.0
# How long ``qemu-system-x86_64 --version`` may take.
VERSION_TIMEOUT_S = 10.0
# Console lines kept for the reason when QEMU dies (bounded).
TAIL_LINES = 20
CACHE_FORMAT = 1


@dataclass(frozen=True)
class AccelChoice:
    """Which accelerator to run guests with, and why (a sentence for status and doctor)."""

    accel: Accel
    reason: str
    cached: bool = False

    def qemu_args(self) -> list[str]:
        """The QEMU arguments that select this accelerator (and the CPU model the probe used)."""
        if self.accel == "kvm":
            return ["-accel", "kvm", "-cpu", "host"]
        return ["-accel", "tcg"]


async def run_version(tool: str, limit_s: float = VERSION_TIMEOUT_S) -> tuple[int, str]:
    """(exit status, stdout and stderr) of ``TOOL --version``, killed after ``limit_s`` seconds.

    Raises :class:`OSError` when the tool cannot run, :class:`TimeoutError` when it hangs.
    """
    proc = await asyncio.create_subprocess_exec(
        tool,
        "--version",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(limit_s):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(errors="replace")


async def qemu_version(emulator: str = DEFAULT_EMULATOR) -> str:
    """``7.2.22`` from ``qemu-system-x86_64 --version``; :class:`LaunchError` if it cannot run."""
    try:
        status, out = await run_version(emulator)
    except OSError as exc:  # also TimeoutError
        raise LaunchError(f"{emulator} --version could not run: {exc}") from exc
    match = re.search(r"version (\S+)", out)
    if status != 0 or match is None:
        raise LaunchError(f"{emulator} --version exited with {status} and no version")
    return match.group(1)


async def probe_accelerator(
    *,
    cache_dir: Path | None = None,
    refresh: bool = False,
    emulator: str = DEFAULT_EMULATOR,
    boot_timeout: float = KVM_PROBE_TIMEOUT_S,
    kvm_device: Path = KVM_DEVICE,
) -> AccelChoice:
    """KVM if a test guest really boots under it, TCG otherwise (never raises for that).

    Raises :class:`~virtnode.errors.LaunchError` only when ``emulator`` itself cannot
    run. The probe QEMU is always killed, also on cancellation.
    """
    unusable = _kvm_device_problem(kvm_device)
    if unusable:
        return AccelChoice("tcg", f"TCG fallback: {unusable}")
    cache_root = cache_dir or default_cache_dir()
    version = await qemu_version(emulator)
    cache_file = _cache_file(cache_root, emulator, version)
    if not refresh:
        cached = _read_cache(cache_file)
        if cached is not None:
            return cached
    try:
        guest = await asyncio.to_thread(build_tiny_guest, cache_root)
    except GuestBuildError as exc:
        return AccelChoice("tcg", f"TCG fallback: the KVM probe guest could not be built: {exc}")
    argv = [
        emulator,
        *("-machine", "pc", "-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1"),
        *("-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"),
        *("-serial", "stdio", "-kernel", str(guest.vmlinux), "-initrd", str(guest.initrd)),
        *("-append", kernel_cmdline(mode="poweroff", markdev="none")),
    ]
    choice = await _boot_verdict(argv, guest.ready_line, boot_timeout, kvm_device)
    _write_cache(cache_file, choice)
    return choice


def _kvm_device_problem(device: Path) -> str | None:
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{device} does not exist (no KVM on this host)"
    except PermissionError:
        return f"{device} exists but this user cannot open it (add the user to group kvm)"
    except OSError as exc:
        return f"{device} cannot be opened: {exc.strerror}"
    os.close(fd)
    return None


async def _boot_verdict(
    argv: list[str], ready_line: str, boot_timeout: float, device: Path
) -> AccelChoice:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        async with asyncio.timeout(boot_timeout):
            booted = await _read_until(proc, ready_line, tail)
    except TimeoutError:
        return AccelChoice(
            "tcg",
            f"TCG fallback: {device} is present but a test guest did not boot under KVM "
            f"within {boot_timeout:g} s (a paravirtual host?)",
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if booted:
        return AccelChoice(
            "kvm", f"KVM: a test guest booted under KVM in {time.monotonic() - started:.1f} s"
        )
    errors = [line for line in tail if "error" in line.lower()] or list(tail)[-2:]
    detail = "; ".join(errors[-2:])[:300] or "no output"
    return AccelChoice(
        "tcg",
        f"TCG fallback: {device} is present but QEMU stopped under KVM with status "
        f"{proc.returncode} before the test guest booted ({detail}; a paravirtual host?)",
    )


async def _read_until(proc: asyncio.subprocess.Process, ready: str, tail: deque[str]) -> bool:
    """True once ``ready`` appears on the console, False when QEMU's output ends first."""
    assert proc.stdout is not None
    while True:
        try:
            raw = await proc.stdout.readline()
        except ValueError:  # an over-long line: keep reading
            continue
        if not raw:
            await proc.wait()
            return False
        line = raw.decode(errors="replace").strip()
        if ready in line:
            return True
        if line:
            tail.append(line)


def _cache_file(root: Path, emulator: str, version: str) -> Path:
    key = f"{os.uname().release}|{emulator}|{version}|{CACHE_FORMAT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return root / "accel" / f"{os.uname().release}-qemu{version}-{digest}.json"


def _read_cache(path: Path) -> AccelChoice | None:
    try:
        data = json.loads(path.read_text())
        if data.get("accel") in ("kvm", "tcg") and isinstance(data.get("reason"), str):
            return AccelChoice(data["accel"], data["reason"], cached=True)
    except (OSError, ValueError):
        pass
    return None


def _write_cache(path: Path, choice: AccelChoice) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    record = asdict(choice) | {"cached": False, "probed_at": time.time()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
