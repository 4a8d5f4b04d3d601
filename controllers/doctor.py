"""``diskplane doctor``: is this host ready to import disks and run guests?

Prints one row per check. Hard requirements (``qemu-img``, ``qemu-system-x86_64``)
make the exit code non-zero when missing; everything else is a warning. The
``/dev/kvm`` row comes from :func:`virtnode.accel.probe_accelerator`, which boots a
test guest under KVM (cached per host kernel and QEMU version; ``--refresh`` probes
again), because on some hosts ``/dev/kvm`` exists but cannot run stock kernels.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from virtnode.accel import DEFAULT_EMULATOR, probe_accelerator, run_version
from virtnode.errors import VirtnodeError
from virtnode.tinyguest import GuestBuildError, check_host_inputs

Status = Literal["ok", "warn", "missing"]

MIN_PYTHON = (3, 11)
# How long one ``<tool> --version`` may take.
VERSION_TIMEOUT_S = 10.0
# Below this much free space in the data dir, the row warns.
LOW_SPACE_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Check:
    """One row of the doctor table."""

    name: str
    status: Status
    detail: str
    hard: bool = False


def exit_code(checks: list[Check]) -> int:
    """1 when a hard requirement is missing, else 0."""
    return 1 if any(c.hard and c.status == "missing" for c in checks) else 0


def render_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'CHECK'.ljust(width)}  STATUS   DETAIL"]
    for check in checks:
        status = check.status if check.status == "ok" else check.status.upper()
        lines.append(f"{check.name.ljust(width)}  {status.ljust(7)}  {check.detail}")
    return "\n".join(lines)


async def run_checks(data_dir: Path, *, refresh: bool = False) -> list[Check]:
    """Every check, in table order (the version probes run concurrently)."""
    qemu_img, qemu, registry, skopeo = await asyncio.gather(
        _tool_version("qemu-img", hard=True, package="qemu-utils"),
        _tool_version(DEFAULT_EMULATOR, hard=True, package="qemu-system-x86"),
        _tool_version("docker-registry", hard=False, package="docker-registry"),
        _tool_version("skopeo", hard=False, package="skopeo"),
    )
    return [
        _python_check(),
        qemu_img,
        qemu,
        await _kvm_check(qemu.status == "ok", refresh),
        registry,
        skopeo,
        _guest_inputs_check(),
        _data_dir_check(data_dir),
    ]


def _python_check() -> Check:
    version = ".".join(str(part) for part in sys.version_info[:3])
    if sys.version_info[:2] < MIN_PYTHON:
        return Check("python", "missing", f"{version}; diskplane needs 3.11 or newer", hard=True)
    return Check("python", "ok", f"{version} ({sys.executable})", hard=True)


async def _tool_version(tool: str, *, hard: bool, package: str) -> Check:
    if shutil.which(tool) is None:
        status: Status = "missing" if hard else "warn"
        return Check(tool, status, f"not on PATH; install the {package} package", hard)
    try:
        exit_status, out = await run_version(tool, VERSION_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        return Check(tool, "missing" if hard else "warn", f"`{tool} --version` failed: {exc}", hard)
    first = out.strip().splitlines()[:1]
    if exit_status != 0 or not first:
        detail = f"`{tool} --version` exited with {exit_status}"
        return Check(tool, "missing" if hard else "warn", detail, hard)
    return Check(tool, "ok", first[0], hard)


async def _kvm_check(have_qemu: bool, refresh: bool) -> Check:
    if not have_qemu:
        return Check("/dev/kvm", "warn", f"not probed: {DEFAULT_EMULATOR} is missing")
    try:
        choice = await probe_accelerator(refresh=refresh)
    except VirtnodeError as exc:
        return Check("/dev/kvm", "warn", f"not probed: {exc}")
    cached = " (cached verdict; --refresh probes again)" if choice.cached else ""
    if choice.accel == "kvm":
        return Check("/dev/kvm", "ok", f"kvm: {choice.reason}{cached}")
    return Check("/dev/kvm", "warn", f"{choice.reason}{cached}")


def _guest_inputs_check() -> Check:
    try:
        return Check("test guest", "ok", check_host_inputs())
    except GuestBuildError as exc:
        return Check("test guest", "warn", str(exc))


def _data_dir_check(data_dir: Path) -> Check:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(data_dir)
    except OSError as exc:
        return Check("data dir", "warn", f"{data_dir} cannot be created or read: {exc.strerror}")
    free = f"{usage.free / 1024**3:.1f} GiB free in {data_dir}"
    if usage.free < LOW_SPACE_BYTES:
        return Check("data dir", "warn", f"only {free}; disks need room")
    return Check("data dir", "ok", free)


def _handle(args: argparse.Namespace) -> int:
    checks = asyncio.run(run_checks(args.data_dir, refresh=args.refresh))
    if args.json:
        rows: list[dict[str, Any]] = [asdict(c) for c in checks]
        print(json.dumps({"checks": rows, "exit_code": exit_code(checks)}, indent=2))
    else:
        print(render_table(checks))
    return exit_code(checks)


def register(subparsers: Any) -> None:
    """Add ``doctor`` to the ``diskplane`` command line."""
    parser = subparsers.add_parser("doctor", help="check this host (QEMU, KVM, registry tools)")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument(
        "--refresh", action="store_true", help="probe KVM again instead of using the cached verdict"
    )
    parser.set_defaults(handler=_handle)
