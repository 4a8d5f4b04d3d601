"""The format probe's header kept beside the journal, so a resumed import refetches nothing.

A ranged import saves what its probe learned (size, Range support,
validator and the 64 KiB head) in ``<volume>/import.probe.json`` when it
starts its journal. A later run whose source can revalidate cheaply (HTTP:
one HEAD, no body; S3: one HeadObject; a file: one stat; a registry: one
manifest request) and still shows the
same size and validator reuses the
saved head instead of fetching bytes ``0-65535`` again; the ranged GETs that
follow carry ``If-Range`` as always, so a change in between is still caught.
The file goes with the journal (success, final failure, discard).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from cdi.sources.base import SourceInfo
from cdi.volumes import PROBE as PROBE_FILE


@runtime_checkable
class Revalidating(Protocol):
    """A source that can confirm a saved probe without reading the body."""

    async def revalidate(self, saved: SourceInfo) -> SourceInfo | None:
        """``saved`` when the source still has that size and validator, else None."""


def path_for(directory: Path) -> Path:
    return directory / PROBE_FILE


def save(directory: Path, source: str, info: SourceInfo) -> None:
    payload = {
        "source": source,
        "size": info.size,
        "supportsRanges": info.supports_ranges,
        "validator": info.validator,
        "resumable": info.resumable,
        "head": base64.b64encode(info.head).decode(),
    }
    tmp = directory / (PROBE_FILE + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path_for(directory))


def load(directory: Path, source: str) -> SourceInfo | None:
    """The saved probe of ``source`` (a redacted description), if any."""
    try:
        data = json.loads(path_for(directory).read_text())
        if not isinstance(data, dict) or data.get("source") != source:
            return None
        size = data["size"]
        return SourceInfo(
            int(size) if size is not None else None,
            bool(data["supportsRanges"]),
            str(data["validator"]) if data["validator"] is not None else None,
            base64.b64decode(str(data["head"])),
            resumable=bool(data.get("resumable", False)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove(directory: Path) -> None:
    for name in (PROBE_FILE, PROBE_FILE + ".tmp"):
        (directory / name).unlink(missing_ok=True)
