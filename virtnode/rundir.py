"""A VM's run directory: what a restarted agent needs to find and re-adopt its QEMU.

``<data_dir>/run/vm-<hash>/`` holds ``vmi.json`` (the VMI object as created),
``state.json`` (pid + start time, accelerator, hot-plugged volumes),
``qmp.sock``, ``serial.sock``, ``serial.log``, ``qemu.pid`` and ``disks/``
(ephemeral disks: emptyDisk, cloud-init ISO, containerDisk overlays). The
directory name is a hash of namespace/name so socket paths stay short
(unix socket paths are limited to 107 bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtnode.argv import LaunchPaths
from virtnode.errors import LaunchError

MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def for_vm(cls, run_root: Path, namespace: str, name: str) -> RunDir:
        digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:16]
        return cls(run_root / f"vm-{digest}")

    @property
    def vmi_file(self) -> Path:
        return self.root / "vmi.json"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def disks(self) -> Path:
        return self.root / "disks"

    @property
    def boot(self) -> Path:
        return self.root / "boot"

    @property
    def launch_paths(self) -> LaunchPaths:
        return LaunchPaths(
            qmp_socket=self.root / "qmp.sock",
            serial_socket=self.root / "serial.sock",
            serial_log=self.root / "serial.log",
            pidfile=self.root / "qemu.pid",
        )

    def create(self) -> None:
        if len(str(self.launch_paths.serial_socket)) > MAX_SOCKET_PATH:
            raise LaunchError(
                f"run dir {self.root} is too deep for unix sockets; use a shorter --data-dir"
            )
        self.disks.mkdir(parents=True, exist_ok=False)
        self.boot.mkdir()

    def write_json(self, path: Path, obj: object) -> None:
        """Write atomically (temp file + rename) so a killed agent never leaves half a file."""
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            json.dump(obj, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)

    def read_json(self, path: Path) -> dict[str, Any]:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path} does not hold a JSON object")  # noqa: TRY004
        return data

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def existing_run_dirs(run_root: Path) -> list[RunDir]:
    if not run_root.is_dir():
        return []
    return [RunDir(p) for p in sorted(run_root.iterdir()) if p.name.startswith("vm-")]
