"""Volumes: directories in a pool holding one ``disk.img`` each (or a block device).

Filesystem volume: ``<root>/<namespace>/<name>/disk.img`` with its capacity in
``volume.json`` beside it. Block volume: the same directory for bookkeeping,
the disk itself is a device path. Completion rule: a filesystem volume is
complete iff ``disk.img`` exists (imports write ``disk.img.partial`` and rename
it); a block volume iff ``volume.json`` says ``"ready": true``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cdi.errors import InvalidRequest, VolumeBusy, VolumeError, VolumeExists, VolumeNotFound
from cdi.settings import MiB

VolumeMode = Literal["Filesystem", "Block"]
VolumeState = Literal["Empty", "Importing", "Ready"]

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RECORD = "volume.json"
DISK = "disk.img"
PARTIAL = "disk.img.partial"
JOURNAL = "import.journal.json"
WORKDIR = ".import"
LOCK = ".lock"
PROBE = "import.probe.json"  # cdi.probecache.PROBE_FILE


def validate_name(kind: str, value: str) -> str:
    """Reject anything that is not a DNS-1123 label (so no path tricks either)."""
    if len(value) > 63 or not _DNS1123_LABEL.match(value):
        raise InvalidRequest(
            f"{kind} {value!r} is not a valid DNS-1123 label "
            "(lower-case letters, digits and '-', at most 63 characters)"
        )
    return value


def usable_size(capacity: int, overhead: float) -> int:
    """CDI's rule: capacity minus the filesystem overhead, rounded down to 1 MiB."""
    if not 0.0 <= overhead < 1.0:
        raise InvalidRequest(f"filesystem overhead {overhead} must be in [0, 1)")
    raw = int(capacity * (1.0 - overhead))
    return raw // MiB * MiB


def block_device_size(path: Path) -> int:
    """Size in bytes of a block device (or of a regular file standing in for one)."""
    with path.open("rb") as handle:
        return handle.seek(0, os.SEEK_END)


@dataclass(frozen=True)
class ImageRecord:
    """The registry image a volume's disk was imported from (persistent containerDisk).

    ``disk_size``/``disk_mtime_ns`` describe ``disk.img`` right after the
    import: a disk changed since (a VM wrote to it) no longer matches and is
    never reused as a copy of the image.
    """

    reference: str  # pinned: registry/repo@sha256:...
    manifest_digest: str
    virtual_size: int
    disk_size: int
    disk_mtime_ns: int

    def to_json(self) -> dict[str, object]:
        return {
            "reference": self.reference,
            "manifestDigest": self.manifest_digest,
            "virtualSize": self.virtual_size,
            "diskSize": self.disk_size,
            "diskMtimeNs": self.disk_mtime_ns,
        }

    @classmethod
    def from_json(cls, data: object) -> ImageRecord | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                str(data["reference"]),
                str(data["manifestDigest"]),
                int(data["virtualSize"]),
                int(data["diskSize"]),
                int(data["diskMtimeNs"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Volume:
    """One volume in a pool; all paths it uses are inside ``directory``."""

    namespace: str
    name: str
    mode: VolumeMode
    capacity: int
    directory: Path
    usable_size: int
    device: Path | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def disk_path(self) -> Path:
        """Where the finished disk lives (the device itself for Block)."""
        return self.device if self.device is not None else self.directory / DISK

    @property
    def partial_path(self) -> Path:
        """Where an import writes (the device itself for Block)."""
        return self.device if self.device is not None else self.directory / PARTIAL

    @property
    def journal_path(self) -> Path:
        return self.directory / JOURNAL

    @property
    def workdir(self) -> Path:
        """Probe headers and scratch copies; removed when an import ends."""
        return self.directory / WORKDIR

    @property
    def lock_path(self) -> Path:
        return self.directory / LOCK

    def is_block(self) -> bool:
        return self.mode == "Block"

    def state(self) -> VolumeState:
        if self.is_block():
            record = _read_record(self.directory)
            if record.get("ready"):
                return "Ready"
        elif (self.directory / DISK).exists():
            return "Ready"
        if self.journal_path.exists() or (self.directory / PARTIAL).exists():
            return "Importing"
        return "Empty"

    def made_by_import(self) -> bool:
        """Whether an import created this volume for itself (not a pre-existing one)."""
        return bool(_read_record(self.directory).get("madeByImport"))

    @contextmanager
    def import_lock(self) -> Iterator[None]:
        """The exclusive flock a running import holds (VolumeBusy when taken)."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise VolumeBusy(f"volume {self.key} is already being imported") from None
            yield
        finally:
            os.close(fd)

    def image(self) -> ImageRecord | None:
        """The registry image recorded on this volume, if any."""
        return ImageRecord.from_json(_read_record(self.directory).get("image"))

    def record_image(self, reference: str, manifest_digest: str, virtual_size: int) -> None:
        """Note which image the finished ``disk.img`` holds (filesystem volumes)."""
        disk = self.disk_path.stat()
        image = ImageRecord(
            reference, manifest_digest, virtual_size, disk.st_size, disk.st_mtime_ns
        )
        record = _read_record(self.directory)
        record["image"] = image.to_json()
        _write_record(self.directory, record)

    def holds_unchanged_image(self, manifest_digest: str) -> bool:
        """A finished filesystem disk of that image, unchanged since its import."""
        if self.is_block() or self.state() != "Ready":
            return False
        image = self.image()
        if image is None or image.manifest_digest != manifest_digest:
            return False
        try:
            disk = self.disk_path.stat()
        except FileNotFoundError:
            return False
        return (disk.st_size, disk.st_mtime_ns) == (image.disk_size, image.disk_mtime_ns)

    def mark_ready(self, ready: bool) -> None:
        """Block volumes only: record completion (filesystem volumes use the rename)."""
        record = _read_record(self.directory)
        record["ready"] = ready
        _write_record(self.directory, record)


class VolumePool:
    """Volumes under one root directory, each with a declared capacity."""

    def __init__(self, root: Path, *, filesystem_overhead: float = 0.06) -> None:
        usable_size(MiB, filesystem_overhead)  # validates the overhead
        self.root = Path(root).absolute()
        self.filesystem_overhead = filesystem_overhead

    @classmethod
    def for_data_dir(cls, data_dir: Path, *, filesystem_overhead: float = 0.06) -> VolumePool:
        return cls(Path(data_dir) / "volumes", filesystem_overhead=filesystem_overhead)

    def _dir(self, namespace: str, name: str) -> Path:
        validate_name("namespace", namespace)
        validate_name("volume name", name)
        return self.root / namespace / name

    def create(
        self, namespace: str, name: str, capacity: int, *, made_by_import: bool = False
    ) -> Volume:
        """Create a filesystem volume, or return the existing one of the same capacity.

        ``made_by_import`` marks a volume an import created for itself, which
        cancelling that import removes again (see :meth:`discard_partial`).
        """
        if capacity < MiB:
            raise InvalidRequest(f"volume capacity {capacity} bytes is below the 1 MiB minimum")
        directory = self._dir(namespace, name)
        if (directory / RECORD).exists():
            volume = self.get(namespace, name)
            if volume.is_block() or volume.capacity != capacity:
                raise VolumeExists(
                    f"volume {namespace}/{name} already exists as {volume.mode} with "
                    f"capacity {volume.capacity} bytes, not {capacity}"
                )
            return volume
        directory.mkdir(parents=True, exist_ok=True)
        record: dict[str, object] = {"capacity": capacity, "mode": "Filesystem", "device": None}
        if made_by_import:
            record["madeByImport"] = True
        _write_record(directory, record)
        return self.get(namespace, name)

    def create_block(self, namespace: str, name: str, device: Path) -> Volume:
        """Register a block device (or a file standing in for one) as a volume."""
        directory = self._dir(namespace, name)
        try:
            mode = device.stat().st_mode
        except OSError as exc:
            raise VolumeError(
                f"block device {device} for {namespace}/{name}: {exc.strerror}"
            ) from exc
        if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
            raise InvalidRequest(f"{device} is neither a block device nor a regular file")
        capacity = block_device_size(device)
        if (directory / RECORD).exists():
            volume = self.get(namespace, name)
            if volume.device != device.resolve():
                raise VolumeExists(f"volume {namespace}/{name} already exists with another device")
            return volume
        directory.mkdir(parents=True, exist_ok=True)
        record = {"capacity": capacity, "mode": "Block", "device": str(device.resolve())}
        _write_record(directory, record)
        return self.get(namespace, name)

    def get(self, namespace: str, name: str) -> Volume:
        directory = self._dir(namespace, name)
        if not (directory / RECORD).exists():
            raise VolumeNotFound(f"volume {namespace}/{name} does not exist in pool {self.root}")
        record = _read_record(directory)
        capacity = int(str(record["capacity"]))
        if record.get("mode") == "Block":
            device = Path(str(record["device"]))
            return Volume(namespace, name, "Block", capacity, directory, capacity, device)
        usable = usable_size(capacity, self.filesystem_overhead)
        return Volume(namespace, name, "Filesystem", capacity, directory, usable)

    def list(self) -> list[Volume]:
        found: list[Volume] = []
        if not self.root.is_dir():
            return found
        for record in sorted(self.root.glob(f"*/*/{RECORD}")):
            found.append(self.get(record.parent.parent.name, record.parent.name))
        return found

    def has_images(self, exclude: str = "") -> bool:
        """Whether any volume (other than ``exclude``) records a registry image."""
        return any(v.key != exclude and v.image() is not None for v in self.list())

    def find_image(self, manifest_digest: str, *, exclude: str = "") -> Volume | None:
        """A volume (other than ``exclude``, an ``ns/name`` key) holding that image unchanged."""
        for volume in self.list():
            if volume.key != exclude and volume.holds_unchanged_image(manifest_digest):
                return volume
        return None

    def discard_partial(self, namespace: str, name: str) -> None:
        """Drop an unfinished import's data (partial disk, journal, probe, scratch).

        The volume itself stays, and so does a finished ``disk.img``; a Block
        volume keeps its device (only the bookkeeping goes).
        """
        volume = self.get(namespace, name)
        if not volume.is_block():
            volume.partial_path.unlink(missing_ok=True)
        for leftover in (JOURNAL, JOURNAL + ".tmp", PROBE, PROBE + ".tmp"):
            (volume.directory / leftover).unlink(missing_ok=True)
        shutil.rmtree(volume.workdir, ignore_errors=True)

    def delete(self, namespace: str, name: str) -> None:
        directory = self._dir(namespace, name)
        if not directory.exists():
            raise VolumeNotFound(f"volume {namespace}/{name} does not exist in pool {self.root}")
        shutil.rmtree(directory)


def _read_record(directory: Path) -> dict[str, object]:
    try:
        data = json.loads((directory / RECORD).read_text())
    except (OSError, ValueError) as exc:
        raise VolumeError(f"volume record {directory / RECORD} is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise VolumeError(f"volume record {directory / RECORD} is not a JSON object")
    return data


def _write_record(directory: Path, record: dict[str, object]) -> None:
    tmp = directory / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, sort_keys=True))
    os.replace(tmp, directory / RECORD)
