"""``diskplane build DISK --oci-layout DIR``: a containerDisk (or artifact) into a layout."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from containerdisk import annotations as ann
from containerdisk import mediatypes as mt
from containerdisk.codecs import Compression
from containerdisk.errors import BuildError
from containerdisk.layer import Progress, stream_disk_blob
from containerdisk.layout import OciLayout
from containerdisk.oci import EMPTY_CONFIG, Descriptor, Manifest, Platform, image_config
from containerdisk.push import (
    DiskFormatPolicy,
    PushFormat,
    containerdisk_layer_type,
    disk_labels,
    prepare_disk,
)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def build_oci_layout(
    disk: Path,
    layout_dir: Path,
    *,
    tag: str = "latest",
    format: PushFormat = "containerdisk",
    compression: Compression | None = None,
    platform: Platform | None = None,
    disk_format: DiskFormatPolicy | None = None,
    work_dir: Path | None = None,
    progress: Progress | None = None,
) -> str:
    """Write the image into ``layout_dir`` under ``tag``; returns the manifest digest."""
    policy: DiskFormatPolicy = disk_format or ("qcow2" if format == "containerdisk" else "keep")
    comp: Compression = compression or ("gzip" if format == "containerdisk" else "zstd")
    if format == "artifact" and comp == "gzip":
        raise BuildError("disk artifacts are compressed with zstd or not at all; not gzip")
    layout = OciLayout(layout_dir).create()
    prepared = await prepare_disk(Path(disk), policy, work_dir)
    temp = layout.temp_blob()
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:

            async def sink(data: bytes) -> None:
                await asyncio.to_thread(_write_all, fd, data)

            blob = await stream_disk_blob(
                prepared.path,
                compression=comp,
                tar=format == "containerdisk",
                sink=sink,
                progress=progress,
                phase="build",
            )
            await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)
        layout.commit_blob(temp, blob.digest)
        labels = disk_labels(prepared.info, blob)
        if format == "containerdisk":
            config = image_config(
                platform or Platform.host(), [blob.diff_id], labels, labels[ann.OCI_CREATED]
            )
            config_desc = Descriptor(mt.OCI_CONFIG, layout.put_bytes(config), len(config))
            layer = Descriptor(containerdisk_layer_type(comp), blob.digest, blob.size)
            manifest = Manifest(config_desc, (layer,), annotations=labels)
        else:
            layout.put_bytes(mt.EMPTY_CONFIG_BYTES)
            layer = Descriptor(
                mt.disk_layer_type(prepared.info.format, segmented=False, zstd=comp == "zstd"),
                blob.digest,
                blob.size,
                annotations={ann.SEGMENT_SIZE: str(blob.disk_size)},
            )
            manifest = Manifest(
                EMPTY_CONFIG, (layer,), annotations=labels, artifact_type=mt.DISK_ARTIFACT_TYPE
            )
        return layout.tag_manifest(manifest, tag)
    finally:
        prepared.cleanup()
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
