"""Push side: a disk file to a registry as a containerDisk or a disk artifact.

containerDisk: the disk (qcow2 by default; raw input is converted with
``qemu-img convert -O qcow2 -c``, which needs a file, so that temp copy is the
one exception to streaming) goes into one tar layer streamed through a chunked
upload while its digests are computed. Artifact: the disk is the blob; with a
segment size it is split into fixed-size segments pushed in parallel, and a
segment the repository already has (blob HEAD) or can mount is not sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import zstandard

from containerdisk import annotations as ann
from containerdisk import mediatypes as mt
from containerdisk.codecs import ZSTD_LEVEL, Compression
from containerdisk.diskinfo import DiskInfo, check_disk, convert_to_qcow2, qemu_img_info
from containerdisk.errors import BuildError, UploadFailed
from containerdisk.layer import BlobResult, Progress, stream_disk_blob
from containerdisk.oci import (
    EMPTY_CONFIG,
    Descriptor,
    Manifest,
    Platform,
    image_config,
    sha256_digest,
)
from containerdisk.reference import Reference
from containerdisk.registry.blobs import head_blob, put_manifest
from containerdisk.registry.transport import Transport
from containerdisk.registry.upload import (
    BlobUpload,
    iterate_file,
    mount_blob,
    upload_bytes,
    upload_monolithic,
)

PushFormat = Literal["containerdisk", "artifact"]
DiskFormatPolicy = Literal["qcow2", "keep"]
SEND_QUEUE_BLOCKS = 6  # compressed blocks (<= 4 MiB each) waiting for the sender
UPLOAD_RESTARTS = 2  # a dead upload session (e.g. a cut PATCH) restarts the blob this often
_READ_PIECE = 4 * 1024 * 1024


@dataclass
class PushResult:
    """What a push did; ``reference`` is pinned to ``manifest_digest``."""

    reference: Reference
    manifest_digest: str
    disk_format: str
    disk_sha256: str
    disk_size: int
    layers: list[Descriptor] = field(default_factory=list)
    uploaded_blobs: int = 0
    skipped_blobs: int = 0
    mounted_blobs: int = 0
    uploaded_bytes: int = 0


@dataclass
class PreparedDisk:
    path: Path
    info: DiskInfo
    temp_dir: tempfile.TemporaryDirectory[str] | None = None

    def cleanup(self) -> None:
        if self.temp_dir is not None:
            self.temp_dir.cleanup()


async def prepare_disk(
    source: Path, policy: DiskFormatPolicy, work_dir: Path | None
) -> PreparedDisk:
    """Probe ``source``; convert to qcow2 when the policy asks and it is not qcow2 already."""
    if not await asyncio.to_thread(_is_disk_file, source):
        raise BuildError(f"disk {source} does not exist or is not a file")
    info = await qemu_img_info(source)
    if info.backing_file or info.data_file:
        raise BuildError(f"disk {source} has a backing or data file; flatten it first")
    if info.format == "qcow2" or (policy == "keep" and info.format == "raw"):
        return PreparedDisk(source, info)
    temp = tempfile.TemporaryDirectory(prefix="diskplane-build-", dir=work_dir)
    target = Path(temp.name) / "disk.qcow2"
    try:
        await convert_to_qcow2(source, target, compress=True)
        converted = await qemu_img_info(target)
        check_disk(converted, f"converted {source.name}")
    except BaseException:
        temp.cleanup()
        raise
    return PreparedDisk(target, converted, temp)


def _is_disk_file(path: Path) -> bool:
    return path.is_file() or path.is_block_device()


def disk_labels(info: DiskInfo, blob: BlobResult) -> dict[str, str]:
    return {
        ann.DISK_FORMAT: info.format,
        ann.DISK_VIRTUAL_SIZE: str(info.virtual_size),
        ann.DISK_SIZE: str(blob.disk_size),
        ann.DISK_SHA256: blob.disk_sha256,
        ann.OCI_CREATED: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def containerdisk_layer_type(compression: Compression) -> str:
    return {"gzip": mt.OCI_LAYER_GZIP, "zstd": mt.OCI_LAYER_ZSTD, "none": mt.OCI_LAYER_TAR}[
        compression
    ]


class _BackgroundSink:
    """Feeds a sink from its own task, so hashing the next blocks overlaps a PATCH in flight."""

    def __init__(self, sink: Callable[[bytes], Awaitable[None]]) -> None:
        self._sink = sink
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(SEND_QUEUE_BLOCKS)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _BackgroundSink:
        self._task = asyncio.create_task(self._run(), name="containerdisk-upload-sender")
        return self

    async def _run(self) -> None:
        while (data := await self._queue.get()) is not None:
            await self._sink(data)

    async def write(self, data: bytes | None) -> None:
        assert self._task is not None
        put = asyncio.ensure_future(self._queue.put(data))
        await asyncio.wait({put, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():  # the sender failed; its error wins
            put.cancel()
            await self._task

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        assert self._task is not None
        try:
            if exc_type is None:
                await self.write(None)
                await self._task
        finally:
            if not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task


async def _stream_to_registry(
    transport: Transport,
    ref: Reference,
    path: Path,
    compression: Compression,
    tar: bool,
    progress: Progress | None,
) -> tuple[BlobResult, int]:
    """Stream one blob through a chunked upload; restart on a dead session."""
    for attempt in range(UPLOAD_RESTARTS + 1):
        upload = BlobUpload(
            transport, ref, f"upload of {path.name} to {ref.registry}/{ref.repository}"
        )
        await upload.start()
        try:
            async with _BackgroundSink(upload.write) as sink:
                result = await stream_disk_blob(
                    path, compression=compression, tar=tar, sink=sink.write, progress=progress
                )
            await upload.finish(result.digest)
            return result, upload.patches
        except UploadFailed:
            await upload.abort()
            if attempt == UPLOAD_RESTARTS:
                raise
        except asyncio.CancelledError:
            await upload.abort(delete=False)  # no network round trip while being cancelled
            raise
        except BaseException:
            await upload.abort()
            raise
    raise AssertionError("unreachable")


async def push_containerdisk(
    transport: Transport,
    prepared: PreparedDisk,
    ref: Reference,
    *,
    compression: Compression,
    platform: Platform,
    progress: Progress | None = None,
) -> PushResult:
    layer, _ = await _stream_to_registry(transport, ref, prepared.path, compression, True, progress)
    labels = disk_labels(prepared.info, layer)
    config = image_config(platform, [layer.diff_id], labels, labels[ann.OCI_CREATED])
    config_digest = sha256_digest(config)
    sent_config = await upload_bytes(transport, ref, config, config_digest)
    layer_desc = Descriptor(containerdisk_layer_type(compression), layer.digest, layer.size)
    manifest = Manifest(
        Descriptor(mt.OCI_CONFIG, config_digest, len(config)), (layer_desc,), annotations=labels
    )
    digest = await put_manifest(
        transport, ref, ref.tag or ref.selector, manifest.encode(), mt.OCI_MANIFEST
    )
    return PushResult(
        ref.with_digest(digest),
        digest,
        prepared.info.format,
        layer.disk_sha256,
        layer.disk_size,
        [layer_desc],
        uploaded_blobs=1 + int(sent_config),
        skipped_blobs=int(not sent_config),
        uploaded_bytes=layer.size,
    )


def _hash_range(path: Path, offset: int, size: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(offset)
        left = size
        while left:
            data = f.read(min(_READ_PIECE, left))
            if not data:
                raise BuildError(f"disk {path} shrank while it was being read")
            h.update(data)
            left -= len(data)
    return "sha256:" + h.hexdigest()


def _compress_range(path: Path, offset: int, size: int) -> tuple[bytes, str]:
    """One zstd frame of the range, in memory (a segment), and the range's own sha256."""
    raw = hashlib.sha256()
    cobj = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compressobj()
    out = bytearray()
    with path.open("rb") as f:
        f.seek(offset)
        left = size
        while left:
            data = f.read(min(_READ_PIECE, left))
            if not data:
                raise BuildError(f"disk {path} shrank while it was being read")
            raw.update(data)
            out += cobj.compress(data)
            left -= len(data)
    out += cobj.flush()
    return bytes(out), "sha256:" + raw.hexdigest()


@dataclass
class _SegmentJob:
    index: int
    offset: int
    size: int


async def _place_blob(
    transport: Transport, ref: Reference, digest: str, mount_from: list[str]
) -> str | None:
    """'skipped' when the repo has the blob, 'mounted' when a mount brought it, else None."""
    if await head_blob(transport, ref, digest, push=True) is not None:
        return "skipped"
    for repo in mount_from:
        if repo != ref.repository and await mount_blob(transport, ref, digest, repo):
            return "mounted"
    return None


async def _push_segment(
    transport: Transport,
    ref: Reference,
    path: Path,
    job: _SegmentJob,
    zstd: bool,
    media_type: str,
    mount_from: list[str],
    result: PushResult,
) -> Descriptor:
    if zstd:
        blob, raw_digest = await asyncio.to_thread(_compress_range, path, job.offset, job.size)
        digest, size = sha256_digest(blob), len(blob)
    else:
        raw_digest = digest = await asyncio.to_thread(_hash_range, path, job.offset, job.size)
        size, blob = job.size, b""
    placed = await _place_blob(transport, ref, digest, mount_from)
    if placed == "skipped":
        result.skipped_blobs += 1
    elif placed == "mounted":
        result.mounted_blobs += 1
    else:

        def body() -> bytes | AsyncIterator[bytes]:
            return blob if zstd else iterate_file(str(path), job.offset, job.size, _READ_PIECE)

        await upload_monolithic(transport, ref, digest, size, body)
        result.uploaded_blobs += 1
        result.uploaded_bytes += size
    notes = {
        ann.SEGMENT_INDEX: str(job.index),
        ann.SEGMENT_OFFSET: str(job.offset),
        ann.SEGMENT_SIZE: str(job.size),
        ann.SEGMENT_SHA256: raw_digest,
    }
    return Descriptor(media_type, digest, size, annotations=notes)


async def push_artifact(
    transport: Transport,
    prepared: PreparedDisk,
    ref: Reference,
    *,
    compression: Compression,
    segment_size: int | None,
    mount_from: list[str] | None = None,
    progress: Progress | None = None,
) -> PushResult:
    if compression == "gzip":
        raise BuildError("disk artifacts are compressed with zstd or not at all; not gzip")
    path, fmt = prepared.path, prepared.info.format
    zstd = compression == "zstd"
    size = path.stat().st_size
    result = PushResult(ref, "", fmt, "", size)
    if not segment_size:
        blob, _ = await _stream_to_registry(transport, ref, path, compression, False, progress)
        result.disk_sha256 = blob.disk_sha256
        notes = {ann.SEGMENT_SIZE: str(size)} if zstd else {}
        layers = [
            Descriptor(
                mt.disk_layer_type(fmt, segmented=False, zstd=zstd),
                blob.digest,
                blob.size,
                annotations={**notes, ann.OCI_TITLE: "disk.img"},
            )
        ]
        result.uploaded_blobs, result.uploaded_bytes = 1, blob.size
    else:
        layers = await _push_segments(
            transport, ref, path, size, segment_size, zstd, fmt, mount_from or [], result, progress
        )
    result.layers = layers
    labels = {
        ann.DISK_FORMAT: fmt,
        ann.DISK_VIRTUAL_SIZE: str(prepared.info.virtual_size),
        ann.DISK_SIZE: str(size),
        ann.DISK_SHA256: result.disk_sha256,
        ann.OCI_CREATED: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if await upload_bytes(transport, ref, mt.EMPTY_CONFIG_BYTES, EMPTY_CONFIG.digest):
        result.uploaded_blobs += 1
    else:
        result.skipped_blobs += 1
    manifest = Manifest(
        EMPTY_CONFIG, tuple(layers), annotations=labels, artifact_type=mt.DISK_ARTIFACT_TYPE
    )
    digest = await put_manifest(
        transport, ref, ref.tag or ref.selector, manifest.encode(), mt.OCI_MANIFEST
    )
    result.reference, result.manifest_digest = ref.with_digest(digest), digest
    return result


async def _push_segments(
    transport: Transport,
    ref: Reference,
    path: Path,
    size: int,
    segment_size: int,
    zstd: bool,
    fmt: str,
    mount_from: list[str],
    result: PushResult,
    progress: Progress | None,
) -> list[Descriptor]:
    jobs = [
        _SegmentJob(i, off, min(segment_size, size - off))
        for i, off in enumerate(range(0, size, segment_size))
    ]
    media_type = mt.disk_layer_type(fmt, segmented=True, zstd=zstd)
    limit = asyncio.Semaphore(transport.settings.parallel_blobs)
    done = 0

    async def one(job: _SegmentJob) -> Descriptor:
        nonlocal done
        async with limit:
            desc = await _push_segment(
                transport, ref, path, job, zstd, media_type, mount_from, result
            )
        done += job.size
        if progress:
            progress("upload", done, size)
        return desc

    # The whole-disk sha256 reads the file once more, from the page cache, beside the segments.
    whole = asyncio.create_task(
        asyncio.to_thread(_hash_range, path, 0, size), name="containerdisk-disk-sha256"
    )
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(one(job), name=f"containerdisk-segment-{job.index}")
                for job in jobs
            ]
        result.disk_sha256 = await whole
    finally:
        if not whole.done():
            whole.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await whole
    return [t.result() for t in tasks]


def volume_disk(data_dir: Path, volume: str) -> Path:
    """``NS/NAME`` -> the volume's disk in the pool (``<data_dir>/volumes/NS/NAME/disk.img``)."""
    namespace, sep, name = volume.partition("/")
    if not sep or not namespace or not name or "/" in name or ".." in (namespace, name):
        raise BuildError(f"volume {volume!r} is not NAMESPACE/NAME")
    directory = data_dir / "volumes" / namespace / name
    record = directory / "volume.json"
    with contextlib.suppress(OSError, ValueError):
        import json

        device = json.loads(record.read_text()).get("device")
        if device:
            return Path(device)
    disk = directory / "disk.img"
    if not disk.exists():
        raise BuildError(f"volume {volume} has no disk at {disk} (not imported yet?)")
    return disk
