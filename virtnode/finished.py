"""Finished VMIs (Succeeded/Failed) on disk, so a restarted agent still reports them.

``<data_dir>/finished/vm-<hash>.json`` holds the VMI object as created plus its final
phase, reason, message, accelerator and migration state. A record is written when a
VM ends, removed when the VMI is deleted or created again, and pruned: only the
newest ``finished_keep_count`` records younger than ``finished_keep_seconds`` stay
(:class:`~virtnode.settings.AgentSettings`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtnode.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinishedRecords:
    root: Path
    keep_count: int
    keep_seconds: float

    def _path(self, namespace: str, name: str) -> Path:
        return self.root / (RunDir.for_vm(self.root, namespace, name).root.name + ".json")

    def save(self, namespace: str, name: str, record: dict[str, Any]) -> list[str]:
        """Write ``record`` atomically; returns the keys (``ns/name``) pruned to make room."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(namespace, name)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            json.dump({**record, "finishedAt": time.time()}, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        return [key for key, _ in self._prune()[1]]

    def remove(self, namespace: str, name: str) -> None:
        self._path(namespace, name).unlink(missing_ok=True)

    def load(self) -> list[dict[str, Any]]:
        """Every retained record, oldest first (expired and unreadable ones are removed)."""
        return self._prune()[0]

    def _prune(self) -> tuple[list[dict[str, Any]], list[tuple[str, Path]]]:
        if not self.root.is_dir():
            return [], []
        entries: list[tuple[float, Path, dict[str, Any]]] = []
        for path in self.root.glob("vm-*.json"):
            try:
                record = json.loads(path.read_text())
                entries.append((float(record["finishedAt"]), path, record))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("removing unreadable finished-VMI record %s: %s", path, exc)
                path.unlink(missing_ok=True)
        entries.sort(key=lambda e: e[0])
        cutoff = time.time() - self.keep_seconds
        drop = len(entries) - self.keep_count
        kept: list[dict[str, Any]] = []
        pruned: list[tuple[str, Path]] = []
        for index, (finished_at, path, record) in enumerate(entries):
            if index < drop or finished_at < cutoff:
                path.unlink(missing_ok=True)
                pruned.append((str(record.get("key", "")), path))
            else:
                kept.append(record)
        return kept, pruned
