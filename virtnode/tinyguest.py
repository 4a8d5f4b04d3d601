"""The tiny test guest: a Linux guest built from host packages, cached by its inputs.

Built from the host's ``/boot/vmlinuz-<release>`` (linux-image-amd64), its modules,
``/bin/busybox`` (busybox-static) and syslinux, with no network, no loop devices, no
mount and no root. One build gives:

- ``initrd``: a gzip'd newc cpio with busybox, the virtio/scsi/cdrom modules in load
  order and ``/init`` (``tinyguest_init.sh``: ready line, marker, disk inventory, then
  ``mode=poweroff`` or ``mode=wait``; docs/testing-guest.md lists its console lines);
- ``vmlinux``: the uncompressed kernel, for fast PVH ``-kernel`` boots (about 4 s under
  TCG instead of 8 s for the xz bzImage);
- ``boot_disk``: a 64 MiB raw disk, MBR with a FAT16 partition (kernel, initrd,
  ``syslinux.cfg``, default label ``wait``) and a raw marker partition whose sector 0
  holds ``DISKPLANE-MARKER count=0``; SeaBIOS boots it in about 10 s under TCG.

The cache entry is read-only by convention: never boot ``boot_disk`` itself, copy it
with :meth:`TinyGuest.write_boot_disk`. Everything here blocks (a cold build takes a
few seconds); async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from virtnode.errors import VirtnodeError

__all__ = [
    "BUILDER_VERSION",
    "CACHE_DIR_ENV",
    "MARKER_TEMPLATE",
    "POWER_BUTTON_LINE",
    "READY_LINE",
    "GuestBuildError",
    "TinyGuest",
    "build_tiny_guest",
    "check_host_inputs",
    "default_cache_dir",
    "kernel_cmdline",
]

BUILDER_VERSION = "1"
CACHE_DIR_ENV = "DISKPLANE_CACHE_DIR"
# Console lines of the guest's /init (tinyguest_init.sh lists them all).
READY_LINE = "DISKPLANE-GUEST READY"
POWER_BUTTON_LINE = "DISKPLANE-GUEST POWER-BUTTON"
MARKER_TEMPLATE = "DISKPLANE-MARKER count={count}"

BUSYBOX = Path("/bin/busybox")
BOOT_DIR = Path("/boot")
MODULES_DIR = Path("/lib/modules")
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
# Wanted modules; their dependencies are added from modules.dep in load order.
WANTED_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "sr_mod",
    "ahci",  # q35's SATA, for cdroms on the sata bus (KubeVirt's default cdrom bus)
    "isofs",
    "button",
    "evdev",
)
# Boot disk geometry (512-byte sectors): p1 FAT16 at 1 MiB, 40 MiB; p2 marker, the rest.
DISK_BYTES = 64 * 1024 * 1024
FAT_START, FAT_SECTORS = 2048, 81920
MARKER_START = FAT_START + FAT_SECTORS
TOOL_TIMEOUT_S = 60.0  # one sfdisk/mkfs.fat/mcopy/syslinux/qemu-img call
# Tools the build runs, and the Debian package of each.
BUILD_TOOLS = {
    "sfdisk": "fdisk",
    "mkfs.fat": "dosfstools",
    "mcopy": "mtools",
    "syslinux": "syslinux",
}


class GuestBuildError(VirtnodeError):
    """The tiny guest could not be built (a host package or tool is missing or failed)."""


@dataclass(frozen=True)
class TinyGuest:
    """One built tiny guest; every path lives in the (read-only) cache entry."""

    kernel: Path  # compressed bzImage, as in /boot
    vmlinux: Path  # uncompressed ELF for fast PVH -kernel boots
    initrd: Path
    boot_disk: Path  # raw, BIOS-bootable; copy it before booting
    kernel_release: str
    ready_line: str = READY_LINE

    def write_boot_disk(self, dest: Path, fmt: str = "qcow2") -> Path:
        """Write a private, bootable copy of the boot disk as ``raw`` or ``qcow2``."""
        if fmt not in ("raw", "qcow2"):
            raise GuestBuildError(f"boot disk format {fmt!r} is not supported; use raw or qcow2")
        dest.parent.mkdir(parents=True, exist_ok=True)
        argv = ["qemu-img", "convert", "-f", "raw", "-O", fmt, str(self.boot_disk), str(dest)]
        _run(argv, what=f"writing the boot disk to {dest}")
        return dest


def kernel_cmdline(mode: str = "poweroff", markdev: str = "auto", extra: str = "") -> str:
    """The ``-append`` string for a ``-kernel`` boot (serial console on ttyS0)."""
    if mode not in ("poweroff", "wait"):
        raise GuestBuildError(f"guest mode {mode!r} is unknown; use poweroff or wait")
    return f"console=ttyS0 quiet panic=-1 mode={mode} markdev={markdev} {extra}".strip()


def default_cache_dir() -> Path:
    """``$DISKPLANE_CACHE_DIR`` or ``~/.cache/diskplane``."""
    chosen = os.environ.get(CACHE_DIR_ENV)
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "diskplane"


def check_host_inputs(kernel_release: str | None = None) -> str:
    """What the guest would be built from (a short sentence), without building it.

    Raises :class:`GuestBuildError` naming the missing file, tool and its package.
    """
    release = kernel_release or _newest_kernel_release()
    _Inputs.collect(release)
    for tool, package in BUILD_TOOLS.items():
        if shutil.which(tool) is None:
            raise GuestBuildError(f"{tool} is not on PATH; install the {package} package")
    return f"kernel {release}, busybox-static, syslinux"


def build_tiny_guest(cache_dir: Path | None = None, kernel_release: str | None = None) -> TinyGuest:
    """Return the cached tiny guest for the host's inputs, building it if needed.

    Concurrent callers are safe: each builds into a private temp dir that is renamed
    into place; the loser of the rename race uses the winner's entry.
    """
    release = kernel_release or _newest_kernel_release()
    inputs = _Inputs.collect(release)
    root = (cache_dir or default_cache_dir()) / "tinyguest"
    entry = root / f"{release}-{inputs.key()}"
    if not (entry / "manifest.json").is_file():
        try:
            _build_atomically(root, entry, inputs)
        except OSError as exc:
            raise GuestBuildError(
                f"building the tiny guest in {root} failed: {exc.strerror or exc}"
            ) from exc
    return _guest_at(entry, release)


def _build_atomically(root: Path, entry: Path, inputs: _Inputs) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        _build_into(tmp, inputs)
        tmp.chmod(0o755)  # mkdtemp makes it private; QEMU may run as another user
        try:
            tmp.rename(entry)
        except OSError:
            if not (entry / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _guest_at(entry: Path, release: str) -> TinyGuest:
    return TinyGuest(
        kernel=entry / "vmlinuz",
        vmlinux=entry / "vmlinux",
        initrd=entry / "initrd.gz",
        boot_disk=entry / "boot.raw",
        kernel_release=release,
    )


@dataclass(frozen=True)
class _Inputs:
    release: str
    vmlinuz: Path
    modules: tuple[Path, ...]  # in load order
    init_script: bytes

    @classmethod
    def collect(cls, release: str) -> _Inputs:
        vmlinuz = BOOT_DIR / f"vmlinuz-{release}"
        for needed, package in (
            (vmlinuz, "linux-image-amd64"),
            (BUSYBOX, "busybox-static"),
            (SYSLINUX_MBR, "syslinux-common"),
        ):
            if not needed.is_file():
                raise GuestBuildError(f"{needed} is missing; install the {package} package")
        script = resources.files("virtnode").joinpath("tinyguest_init.sh").read_bytes()
        return cls(release, vmlinuz, _module_load_order(release), script)

    def key(self) -> str:
        digest = hashlib.sha256(f"builder={BUILDER_VERSION}\n".encode())
        digest.update(self.init_script)
        for path in (self.vmlinuz, BUSYBOX, SYSLINUX_MBR, *self.modules):
            digest.update(f"{path.name}\n".encode())
            digest.update(_file_digest(path))
        return digest.hexdigest()[:16]


def _file_digest(path: Path) -> bytes:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def _newest_kernel_release() -> str:
    releases = [
        p.name.removeprefix("vmlinuz-")
        for p in BOOT_DIR.glob("vmlinuz-*")
        if (MODULES_DIR / p.name.removeprefix("vmlinuz-") / "modules.dep").is_file()
    ]
    if not releases:
        raise GuestBuildError(
            f"no kernel with modules found in {BOOT_DIR}; install linux-image-amd64"
        )
    return max(releases, key=_release_sort_key)


def _release_sort_key(release: str) -> tuple[tuple[int, ...], str]:
    numbers = tuple(int(p) for p in release.replace("-", ".").split(".") if p.isdigit())
    return numbers, release


def _module_load_order(release: str) -> tuple[Path, ...]:
    """The wanted modules and their dependencies, each after what it needs (modules.dep)."""
    base = MODULES_DIR / release
    deps: dict[str, list[str]] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        target, _, needs = line.partition(":")
        deps[target] = needs.split()
    by_name = {Path(rel).name.split(".ko")[0].replace("-", "_"): rel for rel in deps}
    order: list[str] = []

    def visit(rel: str) -> None:
        if rel in order:
            return
        # modules.dep lists the full closure, the module needed by the others last.
        for need in reversed(deps.get(rel, [])):
            visit(need)
        order.append(rel)

    for name in WANTED_MODULES:
        if name not in by_name:
            raise GuestBuildError(f"kernel {release} has no module {name}; is it built in?")
        visit(by_name[name])
    return tuple(base / rel for rel in order)


def _build_into(out: Path, inputs: _Inputs) -> None:
    shutil.copyfile(inputs.vmlinuz, out / "vmlinuz")
    (out / "vmlinux").write_bytes(_uncompressed_kernel(inputs.vmlinuz.read_bytes()))
    (out / "initrd.gz").write_bytes(_initramfs(inputs))
    _boot_disk(out)
    manifest = {"builder": BUILDER_VERSION, "kernel_release": inputs.release}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _uncompressed_kernel(bzimage: bytes) -> bytes:
    """The ELF vmlinux inside a bzImage (xz or gzip payload)."""
    xz = bzimage.find(b"\xfd7zXZ\x00")
    if xz >= 0:
        try:
            return lzma.LZMADecompressor().decompress(bzimage[xz:])
        except lzma.LZMAError as exc:
            raise GuestBuildError(f"the kernel's xz payload does not decompress: {exc}") from exc
    gz = bzimage.find(b"\x1f\x8b\x08")
    if gz >= 0:
        try:
            return gzip.decompress(bzimage[gz:])
        except (OSError, EOFError) as exc:
            raise GuestBuildError(f"the kernel's gzip payload does not decompress: {exc}") from exc
    raise GuestBuildError("the kernel image has neither an xz nor a gzip payload")


class _Cpio:
    """A newc ("070701") cpio archive written in memory."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._ino += 1
        self._buf.write(b"070701" + b"".join(b"%08x" % f for f in fields) + encoded)
        self._pad()
        self._buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self._buf.write(b"\0" * (-self._buf.tell() % 4))

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return self._buf.getvalue()


def _initramfs(inputs: _Inputs) -> bytes:
    cpio = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "mnt", "lib", "lib/modules"):
        cpio.add(d, stat.S_IFDIR | 0o755)
    cpio.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    cpio.add("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes())
    cpio.add("init", stat.S_IFREG | 0o755, inputs.init_script)
    names = []
    for module in inputs.modules:
        name = module.name.split(".ko")[0]
        names.append(name)
        cpio.add(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, module.read_bytes())
    cpio.add("lib/modules/load-order", stat.S_IFREG | 0o644, ("\n".join(names) + "\n").encode())
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


def _syslinux_cfg() -> str:
    labels = []
    for mode in ("wait", "poweroff"):
        labels.append(
            f"LABEL {mode}\n  LINUX vmlinuz\n  INITRD initrd.gz\n"
            f"  APPEND console=ttyS0 quiet panic=-1 mode={mode} markdev=auto\n"
        )
    # A plain disk boot runs like a real OS: it waits for the ACPI power button.
    return "SERIAL 0 115200\nDEFAULT wait\nPROMPT 0\nTIMEOUT 0\n" + "".join(labels)


def _boot_disk(out: Path) -> None:
    disk = out / "boot.raw"
    with disk.open("wb") as f:
        f.truncate(DISK_BYTES)
    table = (
        "label: dos\nlabel-id: 0x44504731\n"
        f"start={FAT_START}, size={FAT_SECTORS}, type=6, bootable\n"
        f"start={MARKER_START}, type=da\n"
    )
    _run(["sfdisk", "-q", str(disk)], what="partitioning the boot disk", stdin=table)
    fat_offset = FAT_START * 512
    _run(
        [
            "mkfs.fat",
            "-F",
            "16",
            "-n",
            "DPGUEST",
            "--offset",
            str(FAT_START),
            str(disk),
            str(FAT_SECTORS // 2),
        ],
        what="formatting the boot partition",
    )
    (out / "syslinux.cfg").write_text(_syslinux_cfg())
    image = f"{disk}@@{fat_offset}"
    files = [str(out / n) for n in ("vmlinuz", "initrd.gz", "syslinux.cfg")]
    _run(["mcopy", "-o", "-i", image, *files, "::/"], what="copying the kernel to the boot disk")
    _run(
        ["syslinux", "--offset", str(fat_offset), "--install", str(disk)],
        what="installing syslinux",
    )
    (out / "syslinux.cfg").unlink()
    with disk.open("r+b") as f:
        f.write(SYSLINUX_MBR.read_bytes()[:440])
        f.seek(MARKER_START * 512)
        f.write(MARKER_TEMPLATE.format(count=0).encode().ljust(512, b"\0"))


def _run(argv: list[str], *, what: str, stdin: str | None = None) -> None:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    try:
        subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
            timeout=TOOL_TIMEOUT_S,
            env=env,
        )
    except FileNotFoundError as exc:
        raise GuestBuildError(f"{what} failed: {argv[0]} is not installed") from exc
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or "").strip().splitlines()[-3:]
        raise GuestBuildError(
            f"{what} failed: {argv[0]} exited with {exc.returncode}: {' / '.join(detail)}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise GuestBuildError(f"{what} failed: {argv[0]} took over {TOOL_TIMEOUT_S} s") from exc
