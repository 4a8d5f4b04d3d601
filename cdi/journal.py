"""The resume journal: which source ranges are done, and which source they came from.

Saved atomically next to the volume (``import.journal.json``) after the disk
has been fdatasync'd, so a range in the journal is on disk. A rerun resumes
only if the source identity (redacted URL, size, validator, plan) matches;
otherwise it starts over cleanly.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdi.checksum import HashState

VERSION = 1


@dataclass
class Journal:
    """Done source ranges ``[start, end)`` for one (source, plan) identity."""

    path: Path
    identity: dict[str, object]
    done: list[tuple[int, int]] = field(default_factory=list)
    #: The checksum's state over the source prefix hashed so far (resumable hashers only).
    hash: HashState | None = None
    #: A stream decoder's saved state (the ``stream`` plan of a gzip source).
    decoder: dict[str, object] | None = None

    @classmethod
    def load(cls, path: Path, identity: dict[str, object]) -> Journal | None:
        """The saved journal if it belongs to the same source and plan, else None."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("version") != VERSION:
            return None
        if data.get("identity") != identity:
            return None
        done = [(int(s), int(e)) for s, e in data.get("done", [])]
        decoder = data.get("decoder")
        return cls(
            path, identity, _merge(done), _load_hash(data.get("hash")),
            decoder if isinstance(decoder, dict) else None,
        )  # fmt: skip

    @staticmethod
    def exists(path: Path) -> bool:
        return path.exists()

    def add(self, start: int, end: int) -> None:
        self.done = _merge([*self.done, (start, end)])

    def contains(self, start: int, end: int) -> bool:
        return any(s <= start and end <= e for s, e in self.done)

    def done_bytes(self) -> int:
        return sum(e - s for s, e in self.done)

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        payload: dict[str, Any] = {
            "version": VERSION, "identity": self.identity, "done": self.done,
        }  # fmt: skip
        if self.decoder is not None:
            payload["decoder"] = self.decoder
        if self.hash is not None:
            payload["hash"] = {
                "algorithm": self.hash.algorithm,
                "bytes": self.hash.bytes_hashed,
                "context": base64.b64encode(self.hash.context).decode(),
            }
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        for p in (self.path, self.path.with_name(self.path.name + ".tmp")):
            p.unlink(missing_ok=True)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _load_hash(data: object) -> HashState | None:
    if not isinstance(data, dict):
        return None
    try:
        return HashState(
            str(data["algorithm"]), int(data["bytes"]), base64.b64decode(str(data["context"]))
        )
    except (KeyError, ValueError, TypeError):
        return None
