"""An :class:`~controllers.reconcilers.importer.Importer` over the importer service's HTTP API.

Each DataVolume maps to one service job (``ownerUID`` = the DataVolume's uid),
so a restarted controller finds its jobs again with ``GET /v1/imports``
instead of starting them twice. A named follower task per unfinished job
reads the job's server-sent events and falls back to polling when the
stream breaks; every change calls the listener. Upload sources create an
``UploadPending`` job: the DataVolume shows ``UploadReady`` until the user
sends the bytes (``diskplane image-upload``), then follows the import.

Credentials resolved from a ``secretRef`` are handed over as the service
expects them: ``<service data dir>/secrets/<namespace>/<name>.yaml`` (0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cdi import VolumeNotFound, VolumePool
from cdi.service import ClientError, ImporterClient, JobStatus
from controllers.errors import ControllersError
from controllers.reconcilers.importer import ImportJob, ImportState, ImportStatus, Key, cancel_tasks

log = logging.getLogger(__name__)

# Delay before a broken progress stream is read again (polling in between).
FOLLOW_RETRY_S = 1.0
_STATES = {
    "UploadPending": ImportState.UPLOAD_READY,
    "Queued": ImportState.SCHEDULED,
    "Running": ImportState.RUNNING,
    "Succeeded": ImportState.SUCCEEDED,
    "Failed": ImportState.FAILED,
    "Cancelled": ImportState.FAILED,
}


class ImporterServiceError(ControllersError):
    """The importer service refused or did not answer a request."""


@dataclass
class _Entry:
    job: ImportJob
    job_id: str
    status: ImportStatus
    task: asyncio.Task[None] | None = None


def status_of(job: JobStatus) -> ImportStatus:
    """The service's view of a job as the DataVolume reconciler reads it."""
    state = _STATES.get(job.phase, ImportState.SCHEDULED)
    failed = state == ImportState.FAILED
    return ImportStatus(
        state,
        progress=job.progress if job.phase != "Succeeded" else "100.00%",
        bytes_done=job.bytes_read,
        bytes_total=job.bytes_total,
        restarts=int(job.raw.get("retries") or 0),
        reason=(job.reason or "ImportFailed") if failed else "",
        message=(job.message or "") if failed else "",
        details={"jobId": job.id, "stage": job.raw.get("stage")},
    )


def import_request(job: ImportJob) -> dict[str, Any]:
    """The service's ``ImportRequest`` for ``job`` (source checksum moved to the top level)."""
    kind, body = next(iter(job.source.items()))
    source_body = dict(body or {})
    checksum = source_body.pop("checksum", None)
    if kind == "pvc":
        source_body.setdefault("namespace", job.namespace)
    request: dict[str, Any] = {
        "source": {kind: source_body},
        "target": {"namespace": job.namespace, "name": job.name},
        "size": str(job.size),
        "ownerUID": job.uid,
    }
    if checksum:
        request["checksum"] = checksum
    return request


class ServiceImporter:
    def __init__(
        self,
        url: str,
        *,
        data_dir: Path | None = None,
        token: str | None = None,
    ) -> None:
        """``data_dir``: the service's data dir when it is on this machine (``diskplane up``):
        secrets are written there and deleted DataVolumes' finished volumes removed from it."""
        self.url, self.data_dir = url, data_dir
        self._client = ImporterClient(url, token=token)
        self._pool = VolumePool.for_data_dir(data_dir) if data_dir is not None else None
        self._entries: dict[Key, _Entry] = {}
        self._listener: Callable[[Key], None] = lambda key: None

    def set_listener(self, listener: Callable[[Key], None]) -> None:
        self._listener = listener

    async def ensure(self, job: ImportJob) -> ImportStatus:
        entry = self._entries.get(job.key)
        if entry is not None and entry.job.uid == job.uid:
            return entry.status
        if entry is not None:  # an older object of the same name
            await self.cancel(*job.key)
        try:
            found = await self._find(job)
            if found is None:
                await self._hand_over_credentials(job)
                found = await self._client.create_import(import_request(job))
        except ClientError as exc:
            raise ImporterServiceError(
                f"importer service {self.url} refused the import into {job.namespace}/{job.name}:"
                f" {exc}"
            ) from exc
        entry = _Entry(job, found.id, status_of(found))
        self._entries[job.key] = entry
        if not found.finished:
            entry.task = asyncio.create_task(
                self._follow(entry), name=f"follow-import-{job.namespace}/{job.name}"
            )
        return entry.status

    async def _find(self, job: ImportJob) -> JobStatus | None:
        """This DataVolume's job, if the service has one (a restarted controller)."""
        target = {"namespace": job.namespace, "name": job.name}
        mine = [
            j
            for j in await self._client.list_imports()
            if j.raw.get("target") == target and j.raw.get("ownerUID") == job.uid
        ]
        live = [j for j in mine if j.phase != "Cancelled"]
        return live[-1] if live else None

    async def _hand_over_credentials(self, job: ImportJob) -> None:
        body = next(iter(job.source.values()), None) or {}
        name = body.get("secretRef") if isinstance(body, dict) else None
        if not name or job.credentials is None or self.data_dir is None:
            return
        path = self.data_dir / "secrets" / job.namespace / f"{name}.yaml"
        await asyncio.to_thread(_write_private, path, yaml.safe_dump(dict(job.credentials)))

    def _set(self, entry: _Entry, status: ImportStatus) -> None:
        if status != entry.status:
            entry.status = status
            self._listener(entry.job.key)

    async def _follow(self, entry: _Entry) -> None:
        """Until the job ends: its SSE snapshots; a broken stream falls back to one poll."""
        while True:
            try:
                async for snapshot in self._client.events(entry.job_id):
                    self._set(entry, status_of(snapshot))
                    if snapshot.finished:
                        return
                latest = await self._client.get_import(entry.job_id)
                self._set(entry, status_of(latest))
                if latest.finished:
                    return
            except ClientError as exc:
                log.warning("following import %s: %s", entry.job_id, exc)
            await asyncio.sleep(FOLLOW_RETRY_S)

    async def cancel(self, namespace: str, name: str) -> None:
        entry = self._entries.pop((namespace, name), None)
        if entry is not None and entry.task is not None:
            entry.task.cancel()
            await asyncio.gather(entry.task, return_exceptions=True)
        target = {"namespace": namespace, "name": name}
        try:
            for job in await self._client.list_imports():
                if job.raw.get("target") == target and not job.finished:
                    await self._client.cancel_import(job.id)
        except ClientError as exc:
            raise ImporterServiceError(
                f"importer service {self.url} did not cancel the import into {namespace}/{name}:"
                f" {exc}"
            ) from exc
        if self._pool is not None:  # a finished import's volume stays until removed
            with contextlib.suppress(VolumeNotFound):
                await asyncio.to_thread(self._pool.delete, namespace, name)

    async def close(self) -> None:
        await cancel_tasks(e.task for e in self._entries.values())
        self._entries.clear()
        await self._client.close()


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
