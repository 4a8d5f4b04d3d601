"""Job state in SQLite under ``<data_dir>/importer/jobs.sqlite3``.

Why SQLite and not journal files beside each volume: a job outlives its
volume (a job whose volume was deleted must still report how it ended, and
a cancelled job's volume is removed on purpose), listing must not scan the
pool, and several fields change together (phase, reason, finish time) --
SQLite's WAL gives atomic, crash-safe updates for free. The byte-range
journal that makes a transfer resumable stays the pipeline's, next to the
volume; this store only says which jobs exist and how far they got.

Every call runs on one worker thread so the event loop never waits on a
commit's fsync, and the connection is never shared between threads.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from cdi.service.model import ImportJob, ImportSpec, Phase

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    owner_uid TEXT NOT NULL,
    spec TEXT NOT NULL,
    phase TEXT NOT NULL,
    stage TEXT,
    bytes_read INTEGER NOT NULL DEFAULT 0,
    bytes_total INTEGER,
    bytes_written INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    message TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    volume_created INTEGER NOT NULL DEFAULT 0
);
"""
_COLUMNS = (
    "phase",
    "stage",
    "bytes_read",
    "bytes_total",
    "bytes_written",
    "retries",
    "reason",
    "message",
    "started_at",
    "finished_at",
    "volume_created",
)


class JobStore:
    """Async facade over one SQLite connection owned by one worker thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobstore")
        self._db: sqlite3.Connection | None = None

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._with_db, fn)

    def _with_db(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            raise RuntimeError("job store is closed")
        with self._db:
            return fn(self._db)

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open)

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        self._path.chmod(0o600)
        self._db = db

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)

    async def insert(self, job: ImportJob) -> None:
        def insert(db: sqlite3.Connection) -> None:
            cursor = db.execute(
                "INSERT INTO jobs (id, owner_uid, spec, phase, created_at) VALUES (?,?,?,?,?)",
                (
                    job.id,
                    job.owner_uid,
                    json.dumps(job.spec.to_request()),
                    job.phase.value,
                    job.created_at,
                ),
            )
            job.seq = int(cursor.lastrowid or 0)

        await self._call(insert)

    async def save(self, job: ImportJob) -> None:
        values = [_column_value(job, name) for name in _COLUMNS]
        assignments = ", ".join(f"{name}=?" for name in _COLUMNS)

        def save(db: sqlite3.Connection) -> None:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id=?", (*values, job.id))  # noqa: S608

        await self._call(save)

    async def load_all(self) -> list[ImportJob]:
        def load(db: sqlite3.Connection) -> list[ImportJob]:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
            return [_job_from_row(row) for row in rows]

        return await self._call(load)


def _column_value(job: ImportJob, name: str) -> Any:
    value = getattr(job, name)
    if isinstance(value, Phase):
        return value.value
    if isinstance(value, bool):
        return int(value)
    return value


def _job_from_row(row: sqlite3.Row) -> ImportJob:
    spec = ImportSpec.from_request(json.loads(row["spec"]))
    return ImportJob(
        id=row["id"],
        owner_uid=row["owner_uid"],
        spec=spec,
        phase=Phase(row["phase"]),
        created_at=row["created_at"],
        seq=row["seq"],
        stage=row["stage"],
        bytes_read=row["bytes_read"],
        bytes_total=row["bytes_total"],
        bytes_written=row["bytes_written"],
        retries=row["retries"],
        reason=row["reason"],
        message=row["message"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        volume_created=bool(row["volume_created"]),
    )
