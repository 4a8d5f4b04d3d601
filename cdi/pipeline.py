"""``run_import``: probe, safety, transfer, decode, write, finish — for one volume.

Routes by what the probe finds:

- raw/iso from a range-capable source of known size: concurrent ranges, resumable;
- qcow2 from a range-capable source: the native reader, resumable;
- vmdk/vdi/vhd/vhdx from a range-capable source: ``qemu-img convert`` reading
  the source in place through our NBD export (a scratch copy when a checksum
  is asked for);
- anything else that streams (no Range, compressed, registry): the sequential
  decode chain into the volume (raw inside) or into a scratch copy;
- scratch copies (vmdk, vdi, vhd, vhdx, qcow2 behind a stream) then go through
  the native qcow2 reader or ``qemu-img convert``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cdi import nbd, probecache, safety, streamresume
from cdi.checksum import StreamHasher
from cdi.convert import qemu_img_convert
from cdi.decode import DecodeChain, OffsetWriter
from cdi.errors import (
    FinalImportError,
    ImageTooLarge,
    VolumeExists,
    VolumeNotFound,
)
from cdi.formats import qcow2
from cdi.formats.detect import Format, detect_compression, detect_format
from cdi.journal import Journal
from cdi.progress import ProgressCallback, ProgressTracker
from cdi.request import ImportRequest
from cdi.reuse import record_image, reuse_image
from cdi.settings import ImportSettings
from cdi.sources.base import Source, SourceInfo, read_range, with_retries
from cdi.sources.factory import open_source
from cdi.sources.file import FileSource
from cdi.streamresume import SCRATCH
from cdi.transfer import LocalReader, RangedTransfer, RangeHandler, SequentialTransfer, split
from cdi.volumes import Volume, VolumePool
from cdi.writer import RawWriter, human


@dataclass(frozen=True)
class ImportResult:
    volume: Volume
    format: str
    virtual_size: int
    source_bytes: int
    bytes_written: int
    checksum: str | None
    resumed: bool
    seconds: float
    reused_from: str | None = None  # ns/name of the volume cloned instead of pulling


async def run_import(
    pool: VolumePool,
    request: ImportRequest,
    *,
    on_progress: ProgressCallback | None = None,
    settings: ImportSettings | None = None,
    source: Source | None = None,
) -> ImportResult:
    """Import ``request.source`` into its volume (created if missing); see docs/cdi.md.

    ``source`` replaces the one ``request.source`` names (the importer service's
    streamed uploads); ``request.source`` still supplies checksum and display name."""
    settings = settings or ImportSettings()
    try:
        volume = pool.get(request.namespace, request.name)
        if not volume.is_block():
            volume = pool.create(request.namespace, request.name, request.size)
    except VolumeNotFound:
        volume = pool.create(request.namespace, request.name, request.size, made_by_import=True)
    if volume.state() == "Ready":
        raise VolumeExists(f"volume {volume.key} already holds an imported disk")
    with volume.import_lock():
        tracker = ProgressTracker(on_progress, settings.progress_interval)
        job = ImportJob(volume, request, settings, tracker, pool=pool, source=source)
        return await job.run()


class ImportJob:
    """One import into one volume; owns the source, the thread pool and the writer."""

    def __init__(
        self,
        volume: Volume,
        request: ImportRequest,
        settings: ImportSettings,
        tracker: ProgressTracker,
        pool: VolumePool | None = None,
        source: Source | None = None,
    ) -> None:
        self.pool = pool
        self._given_source = source
        self.reused_from: str | None = None
        self.volume = volume
        self.request = request
        self.settings = settings
        self.tracker = tracker
        spec = request.source
        self.hasher = StreamHasher(spec.checksum) if spec.checksum else None
        self.executor = ThreadPoolExecutor(
            max_workers=max(1, settings.decode_threads), thread_name_prefix="cdi-decode"
        )
        self.writer: RawWriter | None = None
        self.format: str = "raw"
        self.virtual_size = 0
        self.resumed = False
        self.source_bytes = 0
        self.what = ""

    async def run(self) -> ImportResult:
        started = time.monotonic()
        source = self._given_source or open_source(self.request.source, self.settings)
        self.what = source.description
        try:
            self.volume.workdir.mkdir(exist_ok=True)
            if self.volume.is_block():
                self.volume.mark_ready(False)
            if not await self._reuse(source):
                await self._import(source)
            await self._finish()
            record_image(source, self.volume, self.virtual_size)
        except FinalImportError:
            await self._quiesce()
            self._discard()
            raise
        finally:
            await source.aclose()
            await self._quiesce()
            self._close_writer()
            self._clean_workdir()
        checksum = str(self.hasher.actual()) if self.hasher else None
        written = self.tracker.snapshot.bytes_written
        return ImportResult(
            self.volume,
            self.format,
            self.virtual_size,
            self.source_bytes,
            written,
            checksum,
            self.resumed,
            time.monotonic() - started,
            self.reused_from,
        )

    def _clean_workdir(self) -> None:
        """Remove the work files, except a scratch copy a journal will resume into."""
        keep = self.volume.workdir / SCRATCH
        if not (self.volume.journal_path.exists() and keep.exists()):
            shutil.rmtree(self.volume.workdir, ignore_errors=True)
            return
        for path in self.volume.workdir.iterdir():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path != keep:
                path.unlink(missing_ok=True)

    # Persistent containerDisk ----------------------------------------------------------
    async def _reuse(self, source: Source) -> bool:
        """Clone a volume already holding this registry image instead of pulling it."""
        if self.pool is None:
            return False
        self.tracker.phase("probe")
        cloned = await reuse_image(self.pool, self.volume, source, bool(self.hasher))
        if cloned is None:
            return False
        self.reused_from, self.virtual_size = cloned.donor, cloned.virtual_size
        self.writer = RawWriter(
            self.volume.partial_path, self.volume.usable_size, fresh=False,
            block_device=False, what=self.what,
        )  # fmt: skip
        self.tracker.add(written=cloned.disk_size)
        return True

    # Routing ------------------------------------------------------------------
    async def _import(self, source: Source) -> None:
        self.tracker.phase("probe")
        info = await self._probe(source)
        self.source_bytes = info.size or 0
        if self.request.source.kind == "blank":
            self.tracker.phase("transfer")
            return None
        if detect_compression(info.head) is None:
            fmt = detect_format(info.head)
            self.format = "raw" if fmt == "iso" else fmt
            await self._check_header(fmt, info)
            if info.supports_ranges and info.size is not None:
                if fmt in ("raw", "iso"):
                    return await self._ranged_raw(source, info)
                if fmt == "qcow2":
                    return await self._ranged_qcow2(source, info, hashing=True)
                if self.hasher is None:
                    return await self._ranged_export(source, info, fmt)
                return await self._ranged_scratch(source, info, fmt)
        await self._sequential(source, info)

    async def _probe(self, source: Source) -> SourceInfo:
        """The saved probe when the source confirms it unchanged (see cdi/probecache.py)."""
        directory = self.volume.directory
        saved = await asyncio.to_thread(probecache.load, directory, self.what)
        if saved is not None and isinstance(source, probecache.Revalidating):
            info = await source.revalidate(saved)
            if info is not None:
                return info
        return await source.probe()

    async def _check_header(self, fmt: Format, info: SourceInfo) -> None:
        virtual = await safety.inspect_head(
            self.volume.workdir, fmt, info.head, info.size,
            self.volume.usable_size, self.settings, self.what,
        )  # fmt: skip
        if virtual is not None:
            self.virtual_size = virtual

    # Ranged routes ---------------------------------------------------------------
    def _open_disk(self, *, resuming: bool) -> RawWriter:
        vol = self.volume
        if not resuming and not vol.is_block():
            vol.partial_path.unlink(missing_ok=True)
        writer = RawWriter(
            vol.partial_path,
            vol.usable_size,
            fresh=True,
            block_device=vol.is_block(),
            what=self.what,
        )
        if vol.is_block() and not resuming:
            writer.zero_range(0, vol.usable_size)
        self.writer = writer
        return writer

    def _journal(
        self, info: SourceInfo, plan: str, *, check_target: bool = True
    ) -> tuple[Journal | None, bool]:
        """The journal for this plan; a matching old one (and the partial disk) means we resume.

        ``check_target=False``: the caller checks its own target (cdi/streamresume.py)."""
        if info.validator is None:
            return None, False
        identity: dict[str, object] = {
            "source": self.what,
            "size": info.size,
            "validator": info.validator,
            "plan": plan,
            "volume_usable": self.volume.usable_size,
        }
        old = Journal.load(self.volume.journal_path, identity)
        on_disk = self.volume.is_block() or self.volume.partial_path.exists()
        if old is not None and (on_disk or not check_target):
            self.resumed = True
            return old, True
        self.volume.journal_path.unlink(missing_ok=True)
        probecache.save(self.volume.directory, self.what, info)
        return Journal(self.volume.journal_path, identity), False

    async def _ranged_raw(self, source: Source, info: SourceInfo) -> None:
        assert info.size is not None
        journal, resuming = self._journal(info, "raw")
        writer = self._open_disk(resuming=resuming)
        ranges = split(info.size, self.settings.chunk_size)

        def local(start: int, end: int) -> bytes:
            return os.pread(writer.fd, end - start, start).ljust(end - start, b"\x00")

        await self._run_ranged(source, ranges, writer.write, journal, writer, local, self.hasher)

    async def _run_ranged(
        self,
        source: Source,
        ranges: list[tuple[int, int]],
        handler: RangeHandler,
        journal: Journal | None,
        writer: RawWriter,
        local: LocalReader | None,
        hasher: StreamHasher | None,
    ) -> None:
        transfer = RangedTransfer(
            source,
            ranges,
            handler,
            settings=self.settings,
            tracker=self.tracker,
            executor=self.executor,
            journal=journal,
            datasync=writer.datasync,
            hasher=hasher,
            local_reader=local,
        )  # first: it may drop done ranges whose bytes the checksum still needs
        total = sum(e - s for s, e in ranges)
        done = journal.done_bytes() if journal else 0
        self.tracker.set_total(total, already_read=min(done, total))
        self.tracker.phase("transfer")
        await transfer.run()

    async def _ranged_qcow2(self, source: Source, info: SourceInfo, *, hashing: bool) -> None:
        assert info.size is not None
        header = qcow2.parse_header(info.head, self.what)
        safety.check_size(header.virtual_size, self.volume.usable_size, self.what)
        self.virtual_size, self.format = header.virtual_size, "qcow2"

        async def read(start: int, end: int) -> bytes:
            return await with_retries(self.settings, lambda: read_range(source, start, end))

        clusters = await qcow2.read_map(header, info.size, read, self.what)
        hasher = self.hasher if hashing else None
        ranges = qcow2.plan_ranges(
            clusters, info.size, self.settings.chunk_size, hasher is not None
        )
        resumable = hasher is None or hasher.resumable  # the hash state goes in the journal
        journal, resuming = self._journal(info, "qcow2") if resumable else (None, False)
        writer = self._open_disk(resuming=resuming)

        def handle(start: int, data: bytearray) -> int:
            return qcow2.write_range(header, clusters, start, data, writer.write, self.what)

        await self._run_ranged(source, ranges, handle, journal, writer, None, hasher)

    async def _ranged_export(self, source: Source, info: SourceInfo, fmt: Format) -> None:
        """vmdk/vdi/vhd/vhdx over ranges: qemu-img reads the source in place (cdi/nbd.py).

        No scratch copy: the source is served as a read-only NBD export whose
        reads are cached, read-ahead ranged fetches. (With a checksum the
        scratch route is taken: qemu-img reads out of order, the hash needs order.)
        """
        assert info.size is not None
        self.tracker.set_total(info.size)
        self.tracker.phase("transfer")
        on_read = lambda n: self.tracker.add(read=n)  # noqa: E731
        async with nbd.exported(source, info.size, self.settings, on_read) as export:
            image = safety.QemuInput(image_opts=export.image_opts(fmt))
            usable = self.volume.usable_size
            judged = await safety.inspect(
                image, fmt, usable, self.settings, self.what, head=info.head
            )
            self.virtual_size, self.format = judged.virtual_size, fmt
            await self._convert_to_volume(image, fmt, judged.virtual_size)

    async def _ranged_scratch(self, source: Source, info: SourceInfo, fmt: Format) -> None:
        """vmdk/vdi/vhd/vhdx over ranges: a sparse, resumable scratch copy, then convert."""
        assert info.size is not None
        scratch = self._scratch_limit_check(info.size)
        scratch.unlink(missing_ok=True)  # a kill's leftover: fresh writes skip zeros
        writer = self._scratch_writer(scratch)
        try:
            ranges = split(info.size, self.settings.chunk_size)
            self.tracker.set_total(info.size)
            self.tracker.phase("transfer")
            await RangedTransfer(
                source,
                ranges,
                writer.write,
                settings=self.settings,
                tracker=self.tracker,
                executor=self.executor,
                journal=None,
                datasync=writer.datasync,
                hasher=self.hasher,
            ).run()
            writer.resize(info.size)
        finally:
            writer.close()
        await self._from_scratch(scratch, fmt, info.head)

    def _scratch_writer(self, scratch: Path) -> RawWriter:
        """Scratch copies live in the volume and may use at most its capacity."""
        return RawWriter(
            scratch, self.volume.capacity, fresh=True, block_device=False, what=self.what
        )

    def _scratch_limit_check(self, size: int) -> Path:
        if size > self.volume.capacity:
            raise ImageTooLarge(
                f"{self.what} needs a scratch copy of {human(size)}, more than the volume's "
                f"capacity of {human(self.volume.capacity)}; request a larger volume"
            )
        return self.volume.workdir / SCRATCH

    # Sequential route --------------------------------------------------------------
    async def _sequential(self, source: Source, info: SourceInfo) -> None:
        journal, point = self._stream_journal(info)
        start = point.start if point is not None else 0
        self.tracker.set_total(info.size, already_read=start)
        self.tracker.phase("transfer")
        state: dict[str, DecodeChain] = {}

        def new_chain() -> None:
            old = state.get("chain")
            if old is not None and old.target is not None:
                old.target.writer.close()
            self._close_writer()
            state["chain"] = DecodeChain(self.what, self._stream_target)

        if point is not None:
            state["chain"] = self._resumed_chain(info, point)
        else:
            new_chain()
        feed: Callable[[bytes], int] = lambda d: state["chain"].feed(d)  # noqa: E731
        hasher = self.hasher
        if journal is not None:  # the checkpointing handler feeds the hasher itself
            feed = streamresume.Checkpointing(
                feed, lambda: state["chain"], journal, hasher, self.settings, point
            )
            hasher = None
        await SequentialTransfer(
            source,
            info.size,
            info.supports_ranges or info.resumable,
            feed,
            new_chain,
            settings=self.settings,
            tracker=self.tracker,
            executor=self.executor,
            hasher=hasher,
            start=start,
        ).run()
        chain = state["chain"]
        self.tracker.add(written=await asyncio.to_thread(chain.finish))
        fmt = chain.inner_format or "raw"
        self.format = "raw" if fmt == "iso" else fmt
        if fmt in ("raw", "iso"):
            self.virtual_size = chain.target.offset if chain.target else 0
            return
        assert chain.target is not None
        chain.target.writer.close()
        await self._from_scratch(self.volume.workdir / SCRATCH, fmt, chain.inner_head)

    def _stream_journal(
        self, info: SourceInfo
    ) -> tuple[Journal | None, streamresume.ResumePoint | None]:
        """A journal for a stream that can continue after a kill, and where it continues."""
        if not streamresume.journalled(info, self.hasher):
            return None, None
        journal, resuming = self._journal(info, streamresume.PLAN, check_target=False)
        point = None
        if journal is not None and resuming:
            point = streamresume.resume_point(journal, info, self.hasher, self.volume)
        self.resumed = point is not None
        if point is None and journal is not None and resuming:
            # Starting over: an old resume point must not outlive the target it described.
            journal.done, journal.hash, journal.decoder = [], None, None
            journal.save()
            if self.hasher is not None:
                self.hasher.reset()  # a refused saved state may have been half-applied
        return journal, point

    def _resumed_chain(self, info: SourceInfo, point: streamresume.ResumePoint) -> DecodeChain:
        if point.inner in ("raw", "iso"):
            writer = self._open_disk(resuming=True)
        else:
            writer = self._scratch_writer(streamresume.target_path(self.volume, point.inner))
        target = OffsetWriter(writer, streamresume.target_offset(point))
        return streamresume.resumed_chain(self.what, info, point, target)

    def _stream_target(self, fmt: Format, head: bytes) -> OffsetWriter:
        if fmt in ("raw", "iso"):
            return OffsetWriter(self._open_disk(resuming=False))
        scratch = self.volume.workdir / SCRATCH
        scratch.unlink(missing_ok=True)
        return OffsetWriter(self._scratch_writer(scratch))

    # Scratch second stage ------------------------------------------------------------
    async def _from_scratch(self, scratch: Path, fmt: Format, head: bytes) -> None:
        self.tracker.phase("convert")
        image = await safety.inspect(
            scratch, fmt, self.volume.usable_size, self.settings, self.what, head=head
        )
        self.virtual_size, self.format = image.virtual_size, fmt
        if fmt == "qcow2":
            local = FileSource(scratch)
            info = await local.probe()
            tracker = self.tracker
            self.tracker = ProgressTracker(None, self.settings.progress_interval)
            try:
                await self._ranged_qcow2(local, info, hashing=False)
            finally:
                tracker.add(written=self.tracker.snapshot.bytes_written)
                self.tracker = tracker
            return
        await self._convert_to_volume(safety.QemuInput(path=scratch), fmt, image.virtual_size)
        await asyncio.to_thread(scratch.unlink, missing_ok=True)

    async def _convert_to_volume(self, image: safety.QemuInput, fmt: str, virtual: int) -> None:
        """``qemu-img convert`` into the volume; the writer then holds it for the finish."""
        self._close_writer()
        if not self.volume.is_block():
            self.volume.partial_path.unlink(missing_ok=True)
        await qemu_img_convert(
            image,
            fmt,
            self.volume.partial_path,
            block_device=self.volume.is_block(),
            settings=self.settings,
            what=self.what,
        )
        self.writer = RawWriter(
            self.volume.partial_path,
            self.volume.usable_size,
            fresh=False,
            block_device=self.volume.is_block(),
            what=self.what,
        )
        if self.volume.is_block():  # qemu-img wrote the virtual size; old data may follow
            await asyncio.to_thread(self.writer.zero_range, virtual, self.volume.usable_size)
        else:
            self.tracker.add(written=os.fstat(self.writer.fd).st_blocks * 512)

    # Finish ------------------------------------------------------------------------
    async def _finish(self) -> None:
        if self.writer is None:  # blank or empty source
            self._open_disk(resuming=False)
        writer = self.writer
        assert writer is not None
        self.tracker.phase("resize")
        size = os.fstat(writer.fd).st_size
        if not self.volume.is_block() and size > self.volume.usable_size:
            raise ImageTooLarge(
                f"{self.what} is {human(size)}, larger than the volume's usable size of "
                f"{human(self.volume.usable_size)}; request a larger volume"
            )
        await asyncio.to_thread(writer.resize, self.volume.usable_size)
        if self.request.preallocation:
            await asyncio.to_thread(writer.preallocate, self.volume.usable_size)
        self.tracker.phase("verify")
        if self.hasher is not None:
            self.hasher.verify(self.what)
        await asyncio.to_thread(writer.sync)
        self._close_writer()
        self._commit()
        self.tracker.phase("done")

    def _commit(self) -> None:
        vol = self.volume
        if vol.is_block():
            vol.mark_ready(True)
        else:
            os.replace(vol.partial_path, vol.disk_path)
            dir_fd = os.open(vol.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        vol.journal_path.unlink(missing_ok=True)
        probecache.remove(vol.directory)

    async def _quiesce(self) -> None:
        """Wait for decode threads still running after their task was cancelled."""
        await asyncio.to_thread(self.executor.shutdown, wait=True, cancel_futures=True)

    def _close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _discard(self) -> None:
        """Final failure: nothing half-written may look complete or linger."""
        self._close_writer()
        Journal(self.volume.journal_path, {}).remove()
        probecache.remove(self.volume.directory)
        if not self.volume.is_block():
            self.volume.partial_path.unlink(missing_ok=True)
