"""Node agent benchmark: create->ready vs bare QEMU, QMP round trips, migration downtime.

Run: ``.venv/bin/python bench/vm.py [--runs 3] [--qmp-calls 1000]``. Boots the tiny
guest (accelerator from the probe, TCG on hosts without usable KVM) and prints a
Markdown table plus a JSON line. Results go to bench/README.md by hand.

- create->ready: ``NodeAgent.create()`` (disk prep, QEMU start paused, QMP connect,
  console, ``cont``) until the guest prints its ready line, vs. the same argv (minus
  ``-S``/``-daemonize``) started with ``subprocess`` until the same line on the serial
  socket. Median of ``--runs`` each, alternating.
- QMP: ``query-status`` round trips on a running guest, p50/p99.
- migration: two agents on 127.0.0.1 sharing the volume pool; an idle guest
  (``mode=wait``) and a busy one (an extra initramfs copies a 32 MiB file of random
  bytes over and over in the guest's RAM-backed root, so pages stay dirty and
  non-zero) are migrated A -> B, the busy one also at QEMU's default 128 MiB/s cap.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import shutil
import socket
import stat
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from virtnode import AgentSettings, NodeAgent, choose_accelerator
from virtnode.api import create_app
from virtnode.argv import LaunchOptions, LaunchPaths, build_argv
from virtnode.blockdev import AttachedDisk
from virtnode.migration import migrate
from virtnode.spec import parse_vmi
from virtnode.tinyguest import READY_LINE, TinyGuest, build_tiny_guest, kernel_cmdline

MiB = 2**20
BOOT_TIMEOUT = 120.0

BUSY_SCRIPT = b"""#!/bin/busybox sh
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox dd if=/dev/urandom of=/r bs=1M count=32 2>/dev/null
(while true; do /bin/busybox cp /r /s; done) &
exec /init
"""


def vmi(name: str, guest: TinyGuest, initrd: Path, args: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {
            "domain": {
                "memory": {"guest": "256Mi"},
                "firmware": {
                    "kernelBoot": {
                        "kernelArgs": args,
                        "host": {"kernelPath": str(guest.vmlinux), "initrdPath": str(initrd)},
                    }
                },
            },
            "volumes": [{"name": "root", "persistentVolumeClaim": {"claimName": "root"}}],
        },
    }


def busy_initrd(guest: TinyGuest, dest: Path) -> Path:
    """The tiny guest's initrd plus a second cpio with ``/busy`` (concatenated archives)."""
    buf = io.BytesIO()
    name = b"busy\0"
    fields = (900001, stat.S_IFREG | 0o755, 0, 0, 1, 0, len(BUSY_SCRIPT), 0, 0, 0, 0, len(name), 0)
    buf.write(b"070701" + b"".join(b"%08x" % f for f in fields) + name)
    buf.write(b"\0" * (-buf.tell() % 4) + BUSY_SCRIPT + b"\0" * (-len(BUSY_SCRIPT) % 4))
    trailer = b"TRAILER!!!\0"
    fields = (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(trailer), 0)
    buf.write(b"070701" + b"".join(b"%08x" % f for f in fields) + trailer)
    buf.write(b"\0" * (-buf.tell() % 512))
    dest.write_bytes(guest.initrd.read_bytes() + gzip.compress(buf.getvalue()))
    dest.chmod(0o644)
    return dest


async def agent_boot(agent: NodeAgent, obj: dict[str, Any]) -> float:
    started = time.perf_counter()
    vm = await agent.create(obj)
    assert vm.console is not None
    await vm.console.wait_for(READY_LINE, limit=BOOT_TIMEOUT)
    elapsed = time.perf_counter() - started
    await vm.wait_finished(30)
    agent.vms.pop(vm.key)
    return elapsed


async def bare_boot(obj: dict[str, Any], disk: Path, work: Path) -> float:
    spec = parse_vmi(obj)
    paths = LaunchPaths(work / "qmp.sock", work / "serial.sock", work / "serial.log", work / "pid")
    argv = build_argv(spec, [AttachedDisk(spec.disks[0], disk, "raw")], paths, LaunchOptions())
    argv = [a for a in argv if a not in ("-S", "-daemonize", "-no-shutdown")]
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL)
    try:
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(paths.serial_socket))
                break
            except OSError:
                await asyncio.sleep(0.005)
        seen = b""
        async with asyncio.timeout(BOOT_TIMEOUT):
            while READY_LINE.encode() not in seen:
                seen += await reader.read(4096)
        elapsed = time.perf_counter() - started
        writer.close()
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.to_thread(_empty, work)
    return elapsed


def _empty(directory: Path) -> None:
    for entry in directory.iterdir():
        entry.unlink()


async def qmp_round_trips(agent: NodeAgent, obj: dict[str, Any], calls: int) -> dict[str, float]:
    vm = await agent.create(obj)
    assert vm.console is not None
    assert vm.qmp is not None
    await vm.console.wait_for(READY_LINE, limit=BOOT_TIMEOUT)
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await vm.qmp.execute("query-status")
        samples.append((time.perf_counter() - started) * 1000)
    await vm.stop(0)
    agent.vms.pop(vm.key)
    samples.sort()
    return {
        "p50_ms": round(samples[len(samples) // 2], 3),
        "p99_ms": round(samples[int(len(samples) * 0.99)], 3),
    }


async def migration(
    source: NodeAgent,
    target_url: str,
    target: NodeAgent,
    obj: dict[str, Any],
    wait_for: str,
    bandwidth: int | None = None,
) -> dict[str, Any]:
    vm = await source.create(obj)
    assert vm.console is not None
    await vm.console.wait_for(wait_for, limit=BOOT_TIMEOUT)
    body: dict[str, Any] = {"targetAgent": target_url}
    if bandwidth is not None:
        body["maxBandwidth"] = bandwidth
    stats = await migrate(vm, body)
    moved = target.get(vm.spec.namespace, vm.spec.name)
    assert moved.console is not None
    await moved.console.wait_for("tick", limit=30)
    await moved.stop(0)
    source.vms.pop(vm.key)
    target.vms.pop(vm.key)
    return stats


def _workspace() -> tuple[Path, Path]:
    """A temp root QEMU's user can traverse, with the pool's 16 MiB root volume."""
    root = Path(tempfile.mkdtemp(prefix="dpbench-"))
    root.chmod(0o711)
    disk = root / "pool" / "bench" / "root" / "disk.img"
    disk.parent.mkdir(parents=True)
    (root / "bare").mkdir()
    with disk.open("wb") as fh:
        fh.truncate(16 * MiB)
    return root, disk


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main(runs: int, qmp_calls: int) -> dict[str, Any]:
    guest = await asyncio.to_thread(build_tiny_guest)
    root, disk = await asyncio.to_thread(_workspace)
    pool = root / "pool"
    try:
        settings_a = AgentSettings(data_dir=root / "a", volume_dir=pool)
        accel = await choose_accelerator(settings_a)
        agent_a = NodeAgent(settings_a, accel=accel)
        agent_b = NodeAgent(AgentSettings(data_dir=root / "b", volume_dir=pool), accel=accel)
        port = free_port()
        runner = web.AppRunner(create_app(agent_b))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await agent_a.start()
        try:
            args_off = kernel_cmdline(mode="poweroff", markdev="/dev/vda")
            obj = vmi("boot", guest, guest.initrd, args_off)
            bare_dir = root / "bare"
            agent_times, bare_times = [], []
            for _ in range(runs):
                bare_times.append(await bare_boot(obj, disk, bare_dir))
                agent_times.append(await agent_boot(agent_a, obj))
            args_wait = kernel_cmdline(mode="wait", markdev="/dev/vda")
            qmp = await qmp_round_trips(
                agent_a, vmi("qmp", guest, guest.initrd, args_wait), qmp_calls
            )
            url = f"http://127.0.0.1:{port}"
            idle = await migration(
                agent_a, url, agent_b, vmi("idle", guest, guest.initrd, args_wait), "tick 2"
            )
            initrd = busy_initrd(guest, root / "busy-initrd.gz")
            busy_obj = vmi("busy", guest, initrd, args_wait + " rdinit=/busy")
            busy = await migration(agent_a, url, agent_b, busy_obj, "tick 3")
            busy_obj["metadata"]["name"] = "busy-slow"
            slow = await migration(agent_a, url, agent_b, busy_obj, "tick 3", 128 * MiB)
        finally:
            await agent_a.close()
            await runner.cleanup()
        agent_med, bare_med = statistics.median(agent_times), statistics.median(bare_times)
        return {
            "accelerator": accel.accel,
            "accelerator_reason": accel.reason,
            "create_to_ready_s": {"agent": round(agent_med, 3), "bare": round(bare_med, 3)},
            "ratio": round(agent_med / bare_med, 3),
            "runs": {
                "agent": [round(t, 3) for t in agent_times],
                "bare": [round(t, 3) for t in bare_times],
            },
            "qmp_query_status": qmp,
            "migration": {"idle": idle, "busy": busy, "busy-128MiB/s": slow},
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report(result: dict[str, Any]) -> str:
    mig = result["migration"]
    lines = [
        f"accelerator: {result['accelerator']} ({result['accelerator_reason']})",
        "",
        "| measure | value |",
        "|---|---|",
        f"| create -> ready, agent (median) | {result['create_to_ready_s']['agent']} s |",
        f"| same argv bare (median) | {result['create_to_ready_s']['bare']} s |",
        f"| ratio agent / bare | {result['ratio']} |",
        f"| QMP query-status p50 / p99 | {result['qmp_query_status']['p50_ms']} / "
        f"{result['qmp_query_status']['p99_ms']} ms |",
    ]
    for kind, m in mig.items():
        lines.append(
            f"| migration {kind}: QEMU downtime / guest pause / total / RAM sent / dirty syncs"
            f" | {m['downtimeMs']} ms / {m.get('switchoverMs')} ms / {m['totalTimeMs']} ms"
            f" / {round(m['transferredBytes'] / MiB, 1)} MiB / {m['dirtySyncCount']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--qmp-calls", type=int, default=1000)
    ns = parser.parse_args()
    outcome = asyncio.run(main(ns.runs, ns.qmp_calls))
    print(report(outcome))
    print(json.dumps(outcome))
