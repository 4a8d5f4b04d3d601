"""Runs import jobs: a bounded number at once, the rest queued fairly, state persisted.

Fair sharing: the next job to start is the oldest queued job of the
namespace that was served least recently (round-robin across tenants),
and "large" jobs (capacity at or above ``large_job_bytes``) may take at
most ``max_running - 1`` slots, so a huge import never blocks small ones.
Inside a running job, memory is bounded by the pipeline's chunk size and
concurrency (see ``PipelineRunner``), so N running jobs cost N bounded
buffers, not N images.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterator

from cdi.service.errors import JobConflict, JobFailed, JobNotFound, ServiceError
from cdi.service.events import EventHub
from cdi.service.metrics import ServiceMetrics
from cdi.service.model import ImportJob, ImportSpec, Phase, now_iso
from cdi.service.ports import ImportRunner, ProgressLike
from cdi.service.settings import ServiceSettings
from cdi.service.store import JobStore

log = logging.getLogger(__name__)

LARGE_JOB_BYTES = 64 * 2**30


class JobScheduler:
    def __init__(
        self,
        settings: ServiceSettings,
        store: JobStore,
        runner: ImportRunner,
        metrics: ServiceMetrics,
        events: EventHub,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.events = events
        self._store = store
        self._runner = runner
        self.jobs: dict[str, ImportJob] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancelling: set[str] = set()
        self._served: dict[str, int] = {}
        self._serve_count = 0
        self._wakeup = asyncio.Event()
        self._dirty: set[str] = set()
        self._finished: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = False

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        for job in await self._store.load_all():
            self.jobs[job.id] = job
            if job.phase is Phase.RUNNING:
                await self._recover(job)
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name="importer-dispatch"),
            asyncio.create_task(self._persist_loop(), name="importer-persist"),
        ]
        self.ready = True
        self._wakeup.set()

    async def _recover(self, job: ImportJob) -> None:
        """A job that was running when the service died: resume it, or end it cleanly."""
        exists = await asyncio.to_thread(self._runner.volume_exists, job)
        if job.volume_created and not exists:
            job.phase = Phase.FAILED
            job.reason = "VolumeDeleted"
            job.message = (
                f"volume {job.spec.target} was deleted while its import was interrupted; "
                "nothing to resume"
            )
            job.finished_at = now_iso()
            self.metrics.finish(job.owner_uid, job.reason)
        else:
            job.phase = Phase.QUEUED
            log.info("import job %s was interrupted; it resumes from its journal", job.id)
        await self._store.save(job)

    async def stop(self) -> None:
        """Stop dispatching; interrupt running jobs, which stay Running in the store."""
        self.ready = False
        for task in self._tasks:
            task.cancel()
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*self._tasks, *running, return_exceptions=True)
        await self._flush()

    # -- queries -----------------------------------------------------------

    def get(self, job_id: str) -> ImportJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        self._set_positions()
        return job

    def list(self) -> list[ImportJob]:
        self._set_positions()
        return sorted(self.jobs.values(), key=lambda j: j.seq)

    def phase_counts(self) -> dict[str, int]:
        counts = {phase.value: 0 for phase in Phase}
        for job in self.jobs.values():
            counts[job.phase.value] += 1
        return counts

    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def queue_length(self) -> int:
        return sum(1 for j in self.jobs.values() if j.phase is Phase.QUEUED)

    def active_for_volume(self, namespace: str, name: str) -> ImportJob | None:
        for job in self.jobs.values():
            target = job.spec.target
            if not job.phase.terminal and (target.namespace, target.name) == (namespace, name):
                return job
        return None

    # -- commands ----------------------------------------------------------

    async def submit(self, spec: ImportSpec, owner_uid: str | None = None) -> ImportJob:
        if not self.ready:
            raise JobConflict("the importer service is starting or stopping; retry shortly")
        busy = self.active_for_volume(spec.target.namespace, spec.target.name)
        if busy is not None:
            raise JobConflict(f"volume {spec.target} already has an unfinished import {busy.id}")
        if self.queue_length >= self.settings.max_queued:
            raise JobConflict(f"the import queue is full ({self.settings.max_queued} jobs)")
        job_id = ImportJob.new_id()
        phase = Phase.UPLOAD_PENDING if spec.source_kind == "upload" else Phase.QUEUED
        job = ImportJob(id=job_id, owner_uid=owner_uid or job_id, spec=spec, phase=phase)
        await self._store.insert(job)
        self.jobs[job.id] = job
        log.info("import job %s accepted for volume %s (%s)", job.id, spec.target, spec.source_kind)
        self._changed(job)
        self._wakeup.set()
        return job

    async def release_upload(self, job: ImportJob) -> None:
        """All upload bytes are staged: the job may now take a slot."""
        if job.phase is not Phase.UPLOAD_PENDING:
            return
        job.phase = Phase.QUEUED
        await self._store.save(job)
        self._changed(job)
        self._wakeup.set()

    async def cancel(self, job_id: str) -> ImportJob:
        job = self.get(job_id)
        if job.phase.terminal:
            return job
        self._cancelling.add(job.id)
        try:
            task = self._running.get(job.id)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await asyncio.to_thread(self._runner.discard, job)
            message = f"import into {job.spec.target} was cancelled; its partial data was removed"
            await self._finish(job, Phase.CANCELLED, "Cancelled", message)
            log.info("import job %s cancelled", job.id)
            return job
        finally:
            self._cancelling.discard(job.id)

    async def wait(self, job_id: str) -> ImportJob:
        """Until the job ends; callers bound the wait with ``asyncio.timeout``."""
        job = self.get(job_id)
        if not job.phase.terminal:
            await self._finished_event(job_id).wait()
        return job

    # -- dispatch ----------------------------------------------------------

    def _finished_event(self, job_id: str) -> asyncio.Event:
        return self._finished.setdefault(job_id, asyncio.Event())

    def _fair_order(self) -> Iterator[ImportJob]:
        """Queued jobs in the order they would start, simulating the round-robin."""
        queued = sorted(
            (j for j in self.jobs.values() if j.phase is Phase.QUEUED), key=lambda j: j.seq
        )
        served = dict(self._served)
        tick = self._serve_count
        while queued:
            best = min(queued, key=lambda j: (served.get(j.spec.target.namespace, -1), j.seq))
            queued.remove(best)
            tick += 1
            served[best.spec.target.namespace] = tick
            yield best

    def _set_positions(self) -> None:
        for job in self.jobs.values():
            job.queue_position = None
        for position, job in enumerate(self._fair_order(), start=1):
            job.queue_position = position

    def _next_job(self) -> ImportJob | None:
        limit = self.settings.max_running
        large_running = sum(
            1 for jid in self._running if self.jobs[jid].spec.size_bytes >= LARGE_JOB_BYTES
        )
        for job in self._fair_order():
            large = job.spec.size_bytes >= LARGE_JOB_BYTES
            if large and limit > 1 and large_running >= limit - 1:
                continue
            return job
        return None

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while len(self._running) < self.settings.max_running:
                job = self._next_job()
                if job is None:
                    break
                self._serve_count += 1
                self._served[job.spec.target.namespace] = self._serve_count
                job.phase = Phase.RUNNING
                job.started_at = job.started_at or now_iso()
                self._running[job.id] = asyncio.create_task(
                    self._run(job), name=f"importer-job-{job.id}"
                )
            self._set_positions()

    async def _persist_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.persist_interval_seconds)
            await self._flush()

    async def _flush(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for job_id in dirty:
            await self._store.save(self.jobs[job_id])

    def _changed(self, job: ImportJob) -> None:
        self.events.publish(job.id, job.to_json())

    # -- one job -----------------------------------------------------------

    async def _run(self, job: ImportJob) -> None:
        try:
            await self._store.save(job)
            self._changed(job)
            self.metrics.restart(job.owner_uid)
            await self._attempts(job)
        finally:
            self._running.pop(job.id, None)
            self._wakeup.set()

    async def _attempts(self, job: ImportJob) -> None:
        while True:
            try:
                outcome = await self._runner.run(job, lambda p: self._progress(job, p))
            except JobFailed as exc:
                if exc.final or job.retries >= self.settings.job_retries:
                    await self._fail(job, exc.reason, str(exc))
                    return
                job.retries += 1
                self.metrics.retries += 1
                log.warning(
                    "import job %s failed (%s), retry %d: %s", job.id, exc.reason, job.retries, exc
                )
                delay = self.settings.job_retry_backoff_seconds * 2 ** (job.retries - 1)
                await asyncio.sleep(delay)
                continue
            except ServiceError as exc:
                await self._fail(job, type(exc).__name__, str(exc))
                return
            except Exception as exc:
                log.exception("import job %s hit an internal error", job.id)
                await self._fail(job, "InternalError", f"internal error: {type(exc).__name__}")
                return
            job.bytes_read = max(job.bytes_read, outcome.source_bytes)
            job.bytes_written = outcome.bytes_written
            await self._finish(job, Phase.SUCCEEDED, None, None)
            return

    def _progress(self, job: ImportJob, event: ProgressLike) -> None:
        # The pipeline made the volume by its first event; from now on a missing
        # volume after a restart means someone deleted it.
        job.volume_created = True
        job.stage = event.phase
        job.bytes_read = event.source_bytes_read
        job.bytes_total = event.source_bytes_total
        job.bytes_written = event.bytes_written
        self.metrics.observe(job.owner_uid, job.progress_ratio, job.bytes_read, job.bytes_written)
        self._dirty.add(job.id)
        self._changed(job)

    async def _fail(self, job: ImportJob, reason: str, message: str) -> None:
        log.warning("import job %s failed (%s): %s", job.id, reason, message)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._runner.discard, job)
        await self._finish(job, Phase.FAILED, reason, message)

    async def _finish(
        self, job: ImportJob, phase: Phase, reason: str | None, message: str | None
    ) -> None:
        # Persist first, then change the live job in one step, so nobody sees an
        # end state that a crash could still undo.
        stage = "done" if phase is Phase.SUCCEEDED else job.stage
        ended = dataclasses.replace(
            job, phase=phase, reason=reason, message=message, stage=stage, finished_at=now_iso()
        )
        self._dirty.discard(job.id)
        await self._store.save(ended)
        job.phase, job.reason, job.message = phase, reason, message
        job.stage, job.finished_at = stage, ended.finished_at
        self.metrics.finish(job.owner_uid, reason)
        self._changed(job)
        self._finished_event(job.id).set()
        if phase is Phase.SUCCEEDED:
            log.info("import job %s into %s succeeded", job.id, job.spec.target)
