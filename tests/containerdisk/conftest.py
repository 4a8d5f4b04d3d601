"""Disks for containerdisk tests: small raw/qcow2 images with recognisable content."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

MiB = 1024 * 1024


def make_raw(path: Path, size: int, *, seed: int = 0, dense_fraction: float = 0.5) -> Path:
    """A raw disk: first part random-ish (incompressible), the rest zeros (a hole)."""
    dense = int(size * dense_fraction) // 4096 * 4096
    rng = bytes((seed + i) % 251 for i in range(251))  # marks the seed at the start
    with path.open("wb") as f:
        f.write(rng)
        f.write(os.urandom(max(0, dense - len(rng))))
        f.truncate(size)
    return path


def make_qcow2(raw: Path, dest: Path, *, backing: Path | None = None) -> Path:
    if backing is not None:
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(backing), str(dest)],
            check=True,
            timeout=60,
        )
        return dest
    subprocess.run(
        ["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(dest)], check=True, timeout=60
    )
    return dest


@pytest.fixture
def raw_disk(tmp_path: Path) -> Callable[..., Path]:
    def build(size: int = 4 * MiB, name: str = "disk.raw", **kw: object) -> Path:
        return make_raw(tmp_path / name, size, **kw)  # type: ignore[arg-type]

    return build
