"""Helpers for the import pipeline's tests: small disk images made with real tools."""

from __future__ import annotations

import os
import random
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from cdi import ImportSettings, MiB, Volume, VolumePool

IMAGE_SIZE = 4 * MiB


def make_base(path: Path, size: int = IMAGE_SIZE, seed: int = 7) -> Path:
    """A raw disk with incompressible data in some 64 KiB blocks, zeros elsewhere."""
    rng = random.Random(seed)
    with path.open("wb") as handle:
        handle.truncate(size)
        for offset in range(0, size, 192 * 1024):
            handle.seek(offset)
            handle.write(rng.randbytes(64 * 1024 + 1000))
    return path


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def convert(src: Path, fmt: str, dest: Path, *extra: str) -> Path:
    qemu_img("convert", "-O", fmt, *extra, str(src), str(dest))
    return dest


COMPRESSORS = {
    "gz": ["gzip", "-c"],
    "xz": ["xz", "-c", "-T1"],
    "zst": ["zstd", "-q", "-c"],
    "bz2": ["bzip2", "-c"],
}


def compress(src: Path, kind: str) -> Path:
    dest = src.with_name(src.name + "." + kind)
    with dest.open("wb") as out:
        subprocess.run([*COMPRESSORS[kind], str(src)], check=True, stdout=out)
    return dest


def same_disk(expected_raw: Path, volume: Volume) -> bool:
    """``qemu-img compare`` (sizes may differ only by trailing zeros)."""
    result = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "raw", str(expected_raw), str(volume.disk_path)],
        capture_output=True,
        text=True,
    )
    return result.returncode == 0


def leftovers(volume_dir: Path) -> list[str]:
    """Files an import must not leave behind after a final failure."""
    if not volume_dir.exists():
        return []
    return sorted(p.name for p in volume_dir.iterdir() if p.name not in ("volume.json", ".lock"))


@pytest.fixture
def pool(tmp_path: Path) -> VolumePool:
    return VolumePool.for_data_dir(tmp_path / "data")


@pytest.fixture
def settings() -> ImportSettings:
    """Small chunks so a few-MiB image still makes several ranges; quick backoff."""
    return replace(
        ImportSettings(),
        chunk_size=1 * MiB,
        backoff_initial=0.05,
        backoff_max=0.2,
        read_timeout=5.0,
        connect_timeout=5.0,
        journal_interval=0.05,
    )


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_base(tmp_path / "base.raw")


def sparse_blocks(path: Path) -> int:
    return os.stat(path).st_blocks
