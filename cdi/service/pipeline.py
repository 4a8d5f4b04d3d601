"""``PipelineRunner``: the service's :class:`ImportRunner` over the cdi import pipeline.

The one place where pipeline errors become service errors: retryable
pipeline failures become ``JobFailed(final=False)`` (the scheduler retries
the job, and the pipeline resumes from its journal), all others final.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from cdi import (
    Credentials,
    ImportRequest,
    ImportSettings,
    RetryableImportError,
    SourceSpec,
    Volume,
    VolumeNotFound,
    VolumePool,
    run_import,
)
from cdi import ImportError as PipelineError
from cdi.service.clone import copy_disk, ensure_not_written
from cdi.service.errors import CloneError, JobFailed
from cdi.service.model import ImportJob
from cdi.service.ports import ImportOutcome, ProgressCallback, ProgressUpdate
from cdi.service.schema import JsonObject
from cdi.service.settings import ServiceSettings
from cdi.service.uploads import UploadStaging
from cdi.sources.upload import UploadSource

# Ranged requests each job keeps in flight; with job_buffer_bytes this bounds its memory.
JOB_CONCURRENCY = 4
MIN_CHUNK = 1024 * 1024
_SERVICE_ONLY_KEYS = ("secretRef", "certConfigMap", "secretExtraHeaders", "pullMethod")


class PipelineRunner:
    def __init__(
        self,
        settings: ServiceSettings,
        staging: UploadStaging,
        pool: VolumePool | None = None,
        import_settings: ImportSettings | None = None,
    ) -> None:
        self.settings = settings
        self.staging = staging
        self.pool = pool or VolumePool.for_data_dir(settings.data_dir)
        chunk = max(MIN_CHUNK, settings.job_buffer_bytes // JOB_CONCURRENCY)
        self.import_settings = import_settings or ImportSettings(
            concurrency=JOB_CONCURRENCY, chunk_size=chunk
        )

    async def run(self, job: ImportJob, on_progress: ProgressCallback) -> ImportOutcome:
        if job.spec.source_kind == "pvc":
            return await asyncio.to_thread(self._clone, job, on_progress)
        if job.volume_created and self._finished_before(job):
            # The service died after the pipeline finished but before it noted so.
            await asyncio.to_thread(self.staging.discard, job.id)
            return ImportOutcome(job.bytes_read, job.bytes_written, resumed=True)
        request = self._request(job)
        source = self._upload_source(job)
        try:
            result = await run_import(
                self.pool,
                request,
                on_progress=on_progress,
                settings=self.import_settings,
                source=source,
            )
        except RetryableImportError as exc:
            raise JobFailed(exc.reason, str(exc), final=source is not None) from exc
        except PipelineError as exc:
            raise JobFailed(exc.reason, str(exc), final=True) from exc
        finally:
            if source is not None:
                self.staging.drop_stream(job.id)
        if job.spec.source_kind == "upload":
            await asyncio.to_thread(self.staging.discard, job.id)
        return ImportOutcome(result.source_bytes, result.bytes_written, result.resumed)

    def _upload_source(self, job: ImportJob) -> UploadSource | None:
        """A streamed upload's live bytes; an upload neither streaming nor staged
        lost its bytes to a service restart (streams live in memory only)."""
        if job.spec.source_kind != "upload":
            return None
        stream = self.staging.stream(job.id)
        if stream is not None:
            return UploadSource(stream, f"the upload for volume {job.spec.target}")
        if not self.staging.complete(job.id):
            raise JobFailed(
                "UploadInterrupted",
                f"the upload for volume {job.spec.target} was being streamed into the volume "
                "when the importer service stopped; its bytes were not kept. Create the "
                "import again and upload from the start",
                final=True,
            )
        return None

    def _request(self, job: ImportJob) -> ImportRequest:
        spec = job.spec
        kind = spec.source_kind
        body: JsonObject = dict(spec.source[kind])
        display = None
        if kind == "upload":
            kind, body = "file", {"path": str(self.staging.path(job.id))}
            display = f"the upload for volume {spec.target}"
        if spec.checksum:
            body["checksum"] = spec.checksum
        namespace = spec.target.namespace
        credentials = self._credentials(namespace, body.get("secretRef"))
        ca_file = self._ca_file(namespace, body.get("certConfigMap"))
        for key in _SERVICE_ONLY_KEYS:
            body.pop(key, None)
        try:
            source = SourceSpec.from_cdi({kind: body}, credentials=credentials, ca_file=ca_file)
            source = dataclasses.replace(source, display_name=display)
        except PipelineError as exc:
            raise JobFailed(exc.reason, str(exc), final=True) from exc
        return ImportRequest(
            namespace=namespace, name=spec.target.name, size=spec.size_bytes, source=source
        )

    def _credentials(self, namespace: str, name: object) -> Credentials | None:
        """``secretRef`` names ``<data_dir>/secrets/<namespace>/<name>.yaml``."""
        if not isinstance(name, str):
            return None
        path = self.settings.data_dir / "secrets" / namespace / f"{name}.yaml"
        try:
            return Credentials.from_secret_file(path)
        except PipelineError as exc:
            raise JobFailed(
                "SecretNotFound", f"secret {namespace}/{name}: {exc}", final=True
            ) from exc

    def _ca_file(self, namespace: str, name: object) -> Path | None:
        """``certConfigMap`` names ``<data_dir>/certs/<namespace>/<name>.pem``."""
        if not isinstance(name, str):
            return None
        path = self.settings.data_dir / "certs" / namespace / f"{name}.pem"
        if not path.is_file():
            raise JobFailed(
                "CertNotFound", f"CA bundle {namespace}/{name} does not exist", final=True
            )
        return path

    def _finished_before(self, job: ImportJob) -> bool:
        target = job.spec.target
        try:
            return self.pool.get(target.namespace, target.name).state() == "Ready"
        except VolumeNotFound:
            return False

    def volume_exists(self, job: ImportJob) -> bool:
        target = job.spec.target
        try:
            self.pool.get(target.namespace, target.name)
        except VolumeNotFound:
            return False
        return True

    def discard(self, job: ImportJob) -> None:
        """Drop the staged upload and the volume's partial data; the volume itself
        too when the import created it (a pre-existing volume stays, empty)."""
        self.staging.discard(job.id)
        target = job.spec.target
        try:
            volume = self.pool.get(target.namespace, target.name)
        except VolumeNotFound:
            return
        if volume.state() == "Ready":
            return
        if volume.made_by_import() and not volume.is_block():
            self.pool.delete(target.namespace, target.name)
        else:
            self.pool.discard_partial(target.namespace, target.name)

    # -- pvc clone ------------------------------------------------------------

    def _clone(self, job: ImportJob, on_progress: ProgressCallback) -> ImportOutcome:
        pvc = job.spec.source["pvc"]
        try:
            source = self.pool.get(pvc["namespace"], pvc["name"])
            made = not self.volume_exists(job)
            target = self.pool.create(
                job.spec.target.namespace,
                job.spec.target.name,
                job.spec.size_bytes,
                made_by_import=made,
            )
        except PipelineError as exc:
            raise JobFailed(exc.reason, str(exc), final=True) from exc
        _check_clone(source, target)
        with _flock(source, fcntl.LOCK_SH), _flock(target, fcntl.LOCK_EX):
            try:
                ensure_not_written(source.disk_path)
            except CloneError as exc:
                raise JobFailed("CloneSourceInUse", str(exc), final=True) from exc

            def progress(done: int, total: int) -> None:
                on_progress(ProgressUpdate("transfer", done, total, done))

            copy_disk(source.disk_path, target.partial_path, target.usable_size, progress)
            os.replace(target.partial_path, target.disk_path)
            _fsync_dir(target.directory)
        size = source.disk_path.stat().st_size
        on_progress(ProgressUpdate("done", size, size, size))
        return ImportOutcome(source_bytes=size, bytes_written=size)


def _check_clone(source: Volume, target: Volume) -> None:
    if source.is_block() or target.is_block():
        raise JobFailed(
            "CloneUnsupported", "cloning block volumes is not supported yet", final=True
        )
    if source.state() != "Ready":
        raise JobFailed(
            "CloneSourceNotReady", f"clone source {source.key} holds no finished disk", final=True
        )
    if target.state() == "Ready":
        raise JobFailed("VolumeExists", f"volume {target.key} already holds a disk", final=True)
    size = source.disk_path.stat().st_size
    if size > target.usable_size:
        raise JobFailed(
            "ImageTooLarge",
            f"clone source {source.key} is {size} bytes but volume {target.key} can hold "
            f"{target.usable_size}; request a larger volume",
            final=True,
        )


@contextlib.contextmanager
def _flock(volume: Volume, mode: int) -> Iterator[None]:
    fd = os.open(volume.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            message = f"volume {volume.key} is being imported"
            raise JobFailed("VolumeBusy", message, final=True) from None
        yield
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
