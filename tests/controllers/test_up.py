"""``diskplane up`` reconciles what ``diskplane apply`` writes, and keeps it across restarts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from controllers.api import DATAVOLUME, VIRTUALMACHINE
from controllers.store import EmbeddedStore
from tests.controllers.test_cli import EXAMPLES, LineReader, diskplane

LINE_TIMEOUT = 30.0
PHASE_TIMEOUT = 60.0


def start_up(data_dir: Path) -> tuple[subprocess.Popen[bytes], LineReader]:
    process = subprocess.Popen(
        [sys.executable, "-m", "controllers.cli", "--data-dir", str(data_dir), "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    lines = LineReader(process)
    while "controllers running" not in lines.line(LINE_TIMEOUT):
        pass
    return process, lines


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=LINE_TIMEOUT)  # also closes the pipe
    return process.returncode


async def wait_phase(data_dir: Path, name: str, phase: str) -> dict[str, object]:
    store = await EmbeddedStore.open(data_dir)
    try:
        listing = await store.list(DATAVOLUME, "default")
        for item in listing.items:
            if item["metadata"]["name"] == name and item.get("status", {}).get("phase") == phase:
                return item

        async def follow() -> dict[str, object]:
            async for event in store.watch(DATAVOLUME, "default", listing.resource_version):
                obj = event.object
                if obj["metadata"]["name"] == name and obj.get("status", {}).get("phase") == phase:
                    return obj
            raise AssertionError("watch ended")

        return await asyncio.wait_for(follow(), PHASE_TIMEOUT)
    finally:
        await store.close()


def test_up_imports_a_blank_datavolume_and_survives_a_restart(tmp_path: Path) -> None:
    process, _ = start_up(tmp_path)
    try:
        applied = diskplane(tmp_path, "apply", "-f", str(EXAMPLES / "datavolume-blank.yaml"))
        assert applied.returncode == 0, applied.stderr
        done = asyncio.run(wait_phase(tmp_path, "scratch", "Succeeded"))
        assert (tmp_path / "volumes" / "default" / "scratch").is_dir()
    finally:
        assert stop(process) == 0
    process, _ = start_up(tmp_path)
    try:
        again = asyncio.run(wait_phase(tmp_path, "scratch", "Succeeded"))
        assert again["metadata"]["uid"] == done["metadata"]["uid"]  # type: ignore[index]
        deleted = diskplane(tmp_path, "delete", "dv", "scratch", "--timeout", "30")
        assert deleted.returncode == 0, deleted.stderr
        assert not (tmp_path / "volumes" / "default" / "scratch").exists()
    finally:
        assert stop(process) == 0


async def wait_vm(data_dir: Path, name: str, printable: str) -> None:
    store = await EmbeddedStore.open(data_dir)
    try:

        async def follow() -> None:
            async for event in store.watch(VIRTUALMACHINE, "default"):
                status = event.object.get("status") or {}
                if event.object["metadata"]["name"] == name and (
                    status.get("printableStatus") == printable
                ):
                    return

        await asyncio.wait_for(follow(), PHASE_TIMEOUT)
    finally:
        await store.close()


VM_YAML = """
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: tiny
spec:
  runStrategy: Always
  dataVolumeTemplates:
    - metadata: {name: tiny-root}
      spec:
        source: {blank: {}}
        storage: {resources: {requests: {storage: 16Mi}}}
  template:
    spec:
      terminationGracePeriodSeconds: 1
      domain:
        memory: {guest: 64Mi}
        devices:
          disks: [{name: root, disk: {bus: virtio}}]
      volumes: [{name: root, dataVolume: {name: tiny-root}}]
"""


def kill_leftover_qemu(data_dir: Path) -> None:
    """Safety net for a failed test: QEMUs this test's agent started (they outlive `up`)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and str(data_dir).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


@pytest.mark.guest
def test_up_runs_vms_and_the_cli_stops_and_starts_them(tmp_path: Path) -> None:
    process, _ = start_up(tmp_path)
    try:
        applied = diskplane(tmp_path, "apply", "-f", "-", stdin=VM_YAML)
        assert applied.returncode == 0, applied.stderr
        asyncio.run(wait_vm(tmp_path, "tiny", "Running"))  # QEMU runs (no OS on a blank disk)
        assert diskplane(tmp_path, "stop", "tiny").returncode == 0
        asyncio.run(wait_vm(tmp_path, "tiny", "Stopped"))
        assert diskplane(tmp_path, "get", "vmi", "-o", "name").stdout == ""
        assert diskplane(tmp_path, "start", "tiny").returncode == 0
        asyncio.run(wait_vm(tmp_path, "tiny", "Running"))
        table = diskplane(tmp_path, "get", "vm", "tiny").stdout.splitlines()
        assert table[1].split()[2:4] == ["Running", "True"]
        assert diskplane(tmp_path, "stop", "tiny").returncode == 0
        asyncio.run(wait_vm(tmp_path, "tiny", "Stopped"))
    finally:
        assert stop(process) == 0
        kill_leftover_qemu(tmp_path)
