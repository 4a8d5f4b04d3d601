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

from cdi.service import ImporterClient
from controllers.api import DATAVOLUME, VIRTUALMACHINE
from controllers.nodes import NodeDirectory
from controllers.store import EmbeddedStore
from controllers.up import read_endpoints
from tests.controllers.test_cli import EXAMPLES, LineReader, diskplane
from virtnode import AgentClient

LINE_TIMEOUT = 30.0
PHASE_TIMEOUT = 60.0


def start_up(data_dir: Path) -> tuple[subprocess.Popen[bytes], LineReader]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controllers.cli",
            "--data-dir",
            str(data_dir),
            "up",
            "--importer-listen",
            "127.0.0.1:0",
            "--agent-listen",
            "127.0.0.1:0",
        ],
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


def test_up_serves_the_importer_and_the_agent_and_registers_its_node(tmp_path: Path) -> None:
    process, _ = start_up(tmp_path)
    try:
        endpoints = read_endpoints(tmp_path)
        assert endpoints is not None
        assert endpoints.pid == process.pid
        assert endpoints.importer.startswith("http://127.0.0.1:")
        assert endpoints.agent.startswith("http://127.0.0.1:")

        async def probe() -> None:
            async with AgentClient(endpoints.agent) as agent:
                assert (await agent.health())["status"] == "ok"
            async with ImporterClient(endpoints.importer) as importer:
                assert await importer.list_imports() == []
            store = await EmbeddedStore.open(tmp_path)
            try:
                nodes = await NodeDirectory(store).nodes()
            finally:
                await store.close()
            assert [(n.name, n.url) for n in nodes] == [(endpoints.node, endpoints.agent)]
            assert nodes[0].free_memory > 0

        asyncio.run(probe())
    finally:
        assert stop(process) == 0
    assert read_endpoints(tmp_path) is None


def test_upload_datavolume_goes_upload_ready_then_succeeded(tmp_path: Path) -> None:
    image = tmp_path / "image.raw"
    payload = b"DISKPLANE-UPLOAD" * 4096
    image.write_bytes(payload + bytes(1024 * 1024 - len(payload)))
    data_dir = tmp_path / "data"
    process, _ = start_up(data_dir)
    try:
        applied = diskplane(data_dir, "apply", "-f", str(EXAMPLES / "datavolume-upload.yaml"))
        assert applied.returncode == 0, applied.stderr
        asyncio.run(wait_phase(data_dir, "uploaded", "UploadReady"))
        uploaded = diskplane(data_dir, "image-upload", "dv", "uploaded", "--image-path", str(image))
        assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr
        assert "DataVolume default/uploaded Succeeded" in uploaded.stdout
        done = asyncio.run(wait_phase(data_dir, "uploaded", "Succeeded"))
        assert done["status"]["progress"] == "100.00%"  # type: ignore[index]
        disk = data_dir / "volumes" / "default" / "uploaded" / "disk.img"
        with disk.open("rb") as handle:
            assert handle.read(len(payload)) == payload
        again = diskplane(data_dir, "image-upload", "dv", "uploaded", "--image-path", str(image))
        assert again.returncode == 1
        assert "UploadReady" in again.stderr
    finally:
        assert stop(process) == 0


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
