"""An :class:`~controllers.reconcilers.importer.Importer` that runs ``cdi.run_import``
in this process, into the embedded volume pool (``<data_dir>/volumes``).

One named task per job, owned here and cancelled by :meth:`cancel`/:meth:`close`.
Retryable failures that outlast the pipeline's own retries restart the job
(``restartCount`` like CDI's pod restarts), a bounded number of times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cdi import (
    Credentials,
    FinalImportError,
    ImportRequest,
    ImportSettings,
    Progress,
    RetryableImportError,
    SourceSpec,
    VolumeNotFound,
    VolumePool,
    run_import,
)
from cdi import ImportError as CdiImportError
from controllers.reconcilers.importer import ImportJob, ImportState, ImportStatus, Key, cancel_tasks

log = logging.getLogger(__name__)

# Restarts of a job whose retryable failure outlasted the pipeline's retries.
MAX_RESTARTS = 3
RESTART_BACKOFF_S = 1.0


@dataclass
class _Entry:
    job: ImportJob
    status: ImportStatus
    task: asyncio.Task[None] | None = None


class LocalImporter:
    def __init__(
        self,
        pool: VolumePool,
        settings: ImportSettings | None = None,
        max_restarts: int = MAX_RESTARTS,
    ) -> None:
        self.pool, self.settings, self.max_restarts = pool, settings, max_restarts
        self._entries: dict[Key, _Entry] = {}
        self._listener: Callable[[Key], None] = lambda key: None

    @classmethod
    def for_data_dir(cls, data_dir: Path, **kwargs: Any) -> LocalImporter:
        return cls(VolumePool.for_data_dir(data_dir), **kwargs)

    def set_listener(self, listener: Callable[[Key], None]) -> None:
        self._listener = listener

    def _set(self, entry: _Entry, status: ImportStatus) -> None:
        if status != entry.status:
            entry.status = status
            self._listener(entry.job.key)

    async def ensure(self, job: ImportJob) -> ImportStatus:
        entry = self._entries.get(job.key)
        if entry is not None and entry.job.uid == job.uid:
            return entry.status
        if entry is not None:  # an older object of the same name
            await self.cancel(*job.key)
        entry = _Entry(job, ImportStatus(ImportState.SCHEDULED))
        self._entries[job.key] = entry
        if "upload" in job.source:  # no upload endpoint in-process: the target just waits
            entry.status = ImportStatus(ImportState.UPLOAD_READY)
            return entry.status
        if await asyncio.to_thread(self._already_imported, job):
            entry.status = ImportStatus(ImportState.SUCCEEDED, progress="100.0%")
            return entry.status
        entry.task = asyncio.create_task(
            self._run(entry), name=f"import-{job.namespace}/{job.name}"
        )
        return entry.status

    def _already_imported(self, job: ImportJob) -> bool:
        """A volume finished before this process started (``diskplane up`` restarted)."""
        try:
            return self.pool.get(job.namespace, job.name).state() == "Ready"
        except VolumeNotFound:
            return False

    def _request(self, job: ImportJob) -> ImportRequest:
        source = dict(job.source)
        if "pvc" in source:  # clone: the source volume's disk file
            ref = source.pop("pvc") or {}
            volume = self.pool.get(ref.get("namespace") or job.namespace, ref["name"])
            source["file"] = {"path": str(volume.disk_path)}
        credentials = Credentials.from_mapping(job.credentials) if job.credentials else None
        spec = SourceSpec.from_cdi(source, credentials=credentials)
        return ImportRequest(job.namespace, job.name, job.size, spec, job.preallocation)

    async def _run(self, entry: _Entry) -> None:
        job, restarts = entry.job, 0

        def on_progress(progress: Progress) -> None:
            self._set(
                entry,
                ImportStatus(
                    ImportState.RUNNING,
                    progress=progress.cdi_progress if progress.phase != "done" else "100.0%",
                    bytes_done=progress.source_bytes_read,
                    bytes_total=progress.source_bytes_total,
                    restarts=restarts,
                ),
            )

        while True:
            try:
                request = await asyncio.to_thread(self._request, job)
                self._set(entry, replace(entry.status, state=ImportState.RUNNING))
                result = await run_import(
                    self.pool, request, on_progress=on_progress, settings=self.settings
                )
            except RetryableImportError as exc:
                if restarts >= self.max_restarts:
                    self._fail(entry, exc, restarts)
                    return
                restarts += 1
                log.warning("import %s/%s restarts (%d): %s", *job.key, restarts, exc)
                self._set(entry, replace(entry.status, restarts=restarts, message=str(exc)))
                await asyncio.sleep(RESTART_BACKOFF_S * 2 ** (restarts - 1))
                continue
            except (FinalImportError, CdiImportError) as exc:
                self._fail(entry, exc, restarts)
                return
            except Exception as exc:  # a bug or an untranslated error: fail, say what
                log.exception("import %s/%s failed unexpectedly", *job.key)
                self._fail(entry, exc, restarts)
                return
            self._set(
                entry,
                ImportStatus(
                    ImportState.SUCCEEDED,
                    progress="100.0%",
                    bytes_done=result.source_bytes,
                    bytes_total=result.source_bytes,
                    restarts=restarts,
                    details={
                        "format": result.format,
                        "virtualSize": result.virtual_size,
                        "seconds": result.seconds,
                    },
                ),
            )
            return

    def _fail(self, entry: _Entry, exc: Exception, restarts: int) -> None:
        self._set(
            entry,
            ImportStatus(
                ImportState.FAILED,
                progress=entry.status.progress,
                bytes_done=entry.status.bytes_done,
                bytes_total=entry.status.bytes_total,
                restarts=restarts,
                reason=getattr(exc, "reason", "ImportFailed"),
                message=str(exc),
            ),
        )

    async def cancel(self, namespace: str, name: str) -> None:
        entry = self._entries.pop((namespace, name), None)
        if entry is not None and entry.task is not None:
            entry.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await entry.task
        with contextlib.suppress(VolumeNotFound):
            await asyncio.to_thread(self.pool.delete, namespace, name)

    async def close(self) -> None:
        await cancel_tasks(e.task for e in self._entries.values())
        self._entries.clear()
