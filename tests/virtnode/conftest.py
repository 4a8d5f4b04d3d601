"""Fixtures for the node agent's tests: a traversable data dir, an in-process agent, VMI dicts."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from virtnode import AccelInfo, AgentSettings, NodeAgent
from virtnode.accel import AccelChoice
from virtnode.process import kill
from virtnode.tinyguest import READY_LINE, TinyGuest, kernel_cmdline

READY = READY_LINE
# How long a TCG boot of the tiny guest may take to print a line (4 s typical).
BOOT_TIMEOUT = 60.0


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir QEMU's user (uid 107) can traverse: pytest's tmp dirs are root-only (0700)."""
    path = Path(tempfile.mkdtemp(prefix="dpnode-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def accel_info(guest_accel: AccelChoice) -> AccelInfo:
    return AccelInfo(guest_accel.accel, guest_accel.reason, tuple(guest_accel.qemu_args()))


@pytest.fixture
async def agent(data_dir: Path, accel_info: AccelInfo) -> AsyncIterator[NodeAgent]:
    node = NodeAgent(AgentSettings(data_dir=data_dir), accel=accel_info)
    await node.start()
    try:
        yield node
    finally:
        await kill_all(node)


async def kill_all(node: NodeAgent) -> None:
    """Teardown: no QEMU outlives its test."""
    for vm in list(node.vms.values()):
        if vm.identity is not None:
            kill(vm.identity)
        with contextlib.suppress(TimeoutError):
            await vm.wait_finished(10)
    await node.close()


def make_volume(settings: AgentSettings, name: str, size: int, namespace: str = "default") -> Path:
    path = settings.volumes / namespace / name / "disk.img"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.truncate(size)
    return path


def vmi_object(
    name: str,
    guest: TinyGuest,
    *,
    volumes: list[dict[str, Any]],
    disks: list[dict[str, Any]] | None = None,
    mode: str = "wait",
    markdev: str = "/dev/vda",
    namespace: str = "default",
    grace: int = 30,
) -> dict[str, Any]:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "terminationGracePeriodSeconds": grace,
            "domain": {
                "cpu": {"cores": 1},
                "memory": {"guest": "256Mi"},
                "firmware": {
                    "kernelBoot": {
                        "kernelArgs": kernel_cmdline(mode=mode, markdev=markdev),
                        "host": {"kernelPath": str(guest.vmlinux), "initrdPath": str(guest.initrd)},
                    }
                },
                "devices": {"disks": disks or []},
            },
            "volumes": volumes,
        },
    }


def qemu_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def is_root() -> bool:
    return os.geteuid() == 0


def marker_written(text: str) -> int:
    match = re.search(
        r"DISKPLANE-MARKER-WRITTEN dev=/dev/vda value=\[DISKPLANE-MARKER count=(\d+)", text
    )
    assert match, text[-2000:]
    return int(match.group(1))
