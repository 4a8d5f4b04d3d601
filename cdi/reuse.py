"""Persistent containerDisk: an image already imported into the pool is cloned, not pulled.

A registry import records the image's manifest digest (and pinned
reference) in the volume's ``volume.json`` once ``disk.img`` is final. A
later import of the same digest into another filesystem volume of the same
pool copies that volume's disk with :func:`cdi.diskcopy.copy_disk`
(reflink, else a sparse extent copy) instead of downloading: one manifest
request, no blob request.

A donor is used only when its disk is unchanged since its import (size and
mtime as recorded), nobody has it open for writing, and its import lock can
be shared; otherwise the import downloads as usual. Imports that state a
checksum always download (the checksum covers the source bytes).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from cdi import diskcopy
from cdi.errors import ImageTooLarge, VolumeError
from cdi.sources.base import Source
from cdi.volumes import ImageRecord, Volume, VolumePool
from cdi.writer import human

if TYPE_CHECKING:
    from cdi.sources.registry import RegistrySource


@dataclass(frozen=True)
class Cloned:
    donor: str  # ns/name
    virtual_size: int
    disk_size: int


async def reuse_image(
    pool: VolumePool, volume: Volume, source: Source, has_checksum: bool
) -> Cloned | None:
    """Copy a donor's disk into ``volume.partial_path``; None when the image must be pulled."""
    found = await find_donor(pool, volume, source, has_checksum=has_checksum)
    if found is None:
        return None
    donor, image = found
    if not await asyncio.to_thread(clone_donor, donor, image, volume):
        return None
    return Cloned(donor.key, image.virtual_size, image.disk_size)


def _registry_source(source: Source) -> RegistrySource | None:
    """``source`` when it is a registry source. The source factory imports that module
    (and containerdisk behind it) only for registry sources, so when it is not loaded the
    source cannot be one, and other imports do not pay for loading it here."""
    module = sys.modules.get("cdi.sources.registry")
    if module is None or not isinstance(source, module.RegistrySource):
        return None
    return cast("RegistrySource", source)


def record_image(source: Source, volume: Volume, virtual_size: int) -> None:
    """After a successful registry import: note the image on the volume."""
    registry = _registry_source(source)
    if registry is None or volume.is_block():
        return
    if registry.manifest_digest is not None:
        volume.record_image(str(registry.reference), registry.manifest_digest, virtual_size)


async def find_donor(
    pool: VolumePool, volume: Volume, source: Source, *, has_checksum: bool
) -> tuple[Volume, ImageRecord] | None:
    """The volume to clone instead of pulling ``source``, or None."""
    registry = _registry_source(source)
    if registry is None or volume.is_block() or has_checksum:
        return None
    if not await asyncio.to_thread(pool.has_images, volume.key):
        return None  # nothing to reuse: skip the extra manifest request
    digest = await registry.resolve()
    donor = await asyncio.to_thread(pool.find_image, digest, exclude=volume.key)
    image = donor.image() if donor is not None else None
    if donor is None or image is None:
        return None
    if image.virtual_size > volume.usable_size:
        raise ImageTooLarge(
            f"{source.description} has a virtual size of {human(image.virtual_size)}, more "
            f"than the volume's usable size of {human(volume.usable_size)}; "
            "request a larger volume"
        )
    return donor, image


def clone_donor(donor: Volume, image: ImageRecord, volume: Volume) -> bool:
    """Copy the donor's disk into ``volume.partial_path``; False when the donor is busy.

    Runs on a thread (blocking file I/O).
    """
    fd = os.open(donor.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            diskcopy.ensure_not_written(donor.disk_path)
        except VolumeError:
            return False
        if not donor.holds_unchanged_image(image.manifest_digest):
            return False
        volume.partial_path.unlink(missing_ok=True)
        diskcopy.copy_disk(donor.disk_path, volume.partial_path, volume.usable_size, _quiet)
        return True
    finally:
        os.close(fd)


def _quiet(done: int, total: int) -> None:
    """Progress of a local copy is reported once, when it ends."""
