"""Process-wide settings shared by every ``diskplane`` command."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "DISKPLANE_DATA_DIR"


def default_data_dir() -> Path:
    """The data dir when neither ``--data-dir`` nor ``DISKPLANE_DATA_DIR`` names one."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "diskplane"


def resolve_data_dir(flag: str | None) -> Path:
    """``--data-dir`` wins over ``DISKPLANE_DATA_DIR``, which wins over the default."""
    chosen = flag or os.environ.get(DATA_DIR_ENV)
    return Path(chosen).expanduser().resolve() if chosen else default_data_dir()
