"""The accelerator probe: KVM only when a test guest really boots under it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from virtnode.accel import AccelChoice, probe_accelerator
from virtnode.errors import LaunchError
from virtnode.tinyguest import TinyGuest

# This machine class serves /dev/kvm from PVM, which cannot run stock kernels.
PVM_HOST = Path("/sys/module/kvm_pvm").exists()


def _fake_qemu(path: Path, boot_script: str) -> str:
    """A stand-in emulator: answers --version like QEMU, otherwise runs ``boot_script``."""
    path.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "QEMU emulator version 9.9.9"; exit 0; fi\n'
        f"echo $$ > {path}.pid\n{boot_script}\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def cache_dir(tmp_path: Path, tiny_guest: TinyGuest) -> Path:
    """A private accel cache that reuses the session's built guest."""
    cache = tmp_path / "cache"
    (cache / "tinyguest").mkdir(parents=True)
    entry = tiny_guest.initrd.parent
    (cache / "tinyguest" / entry.name).symlink_to(entry)
    return cache


def test_qemu_args_select_the_accelerator() -> None:
    assert AccelChoice("kvm", "").qemu_args() == ["-accel", "kvm", "-cpu", "host"]
    assert AccelChoice("tcg", "").qemu_args() == ["-accel", "tcg"]


async def test_this_host_gets_an_accelerator_with_a_reason(cache_dir: Path) -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm: the probe boots nothing")
    fresh = await probe_accelerator(cache_dir=cache_dir, refresh=True)
    assert fresh.accel in ("kvm", "tcg")
    assert fresh.reason.startswith("KVM:" if fresh.accel == "kvm" else "TCG fallback:")
    if PVM_HOST:
        assert fresh.accel == "tcg", fresh.reason
        assert "/dev/kvm is present" in fresh.reason
    again = await probe_accelerator(cache_dir=cache_dir)
    assert (again.accel, again.reason, again.cached) == (fresh.accel, fresh.reason, True)


async def test_missing_device_needs_no_boot(tmp_path: Path) -> None:
    choice = await probe_accelerator(cache_dir=tmp_path, kvm_device=tmp_path / "kvm")
    assert choice.accel == "tcg"
    assert "does not exist" in choice.reason
    assert not (tmp_path / "accel").exists(), "a verdict without a boot was cached"


async def test_a_hanging_guest_times_out_and_is_killed(cache_dir: Path, tmp_path: Path) -> None:
    emulator = _fake_qemu(tmp_path / "qemu", "exec sleep 60")
    choice = await probe_accelerator(
        cache_dir=cache_dir, emulator=emulator, kvm_device=Path("/dev/null"), boot_timeout=0.5
    )
    assert choice.accel == "tcg"
    assert "did not boot under KVM within 0.5 s" in choice.reason
    pid = int((tmp_path / "qemu.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_an_aborting_qemu_is_reported(cache_dir: Path, tmp_path: Path) -> None:
    emulator = _fake_qemu(tmp_path / "qemu", 'echo "error: failed to set MSR 0x10a" >&2; exit 1')
    choice = await probe_accelerator(
        cache_dir=cache_dir, emulator=emulator, kvm_device=Path("/dev/null")
    )
    assert choice.accel == "tcg"
    assert "status 1" in choice.reason
    assert "failed to set MSR 0x10a" in choice.reason


async def test_a_guest_that_boots_means_kvm(cache_dir: Path, tmp_path: Path) -> None:
    emulator = _fake_qemu(tmp_path / "qemu", 'echo "DISKPLANE-GUEST READY"; exec sleep 60')
    choice = await probe_accelerator(
        cache_dir=cache_dir, emulator=emulator, kvm_device=Path("/dev/null")
    )
    assert choice.accel == "kvm"
    assert choice.reason.startswith("KVM: a test guest booted under KVM in")
    pid = int((tmp_path / "qemu.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_missing_emulator_is_a_launch_error(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="could not run"):
        await probe_accelerator(
            cache_dir=tmp_path, emulator=str(tmp_path / "no-qemu"), kvm_device=Path("/dev/null")
        )
