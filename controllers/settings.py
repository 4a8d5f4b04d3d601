"""Process-wide settings shared by every ``diskplane`` command."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "DISKPLANE_DATA_DIR"

# root's home is mode 0700, so an unprivileged QEMU (uid 107) could not open
# volumes under it; a system-wide state dir keeps "non-root QEMU" the default.
SYSTEM_DATA_DIR = Path("/var/lib/diskplane")


def default_data_dir() -> Path:
    """The data dir when neither ``--data-dir`` nor ``DISKPLANE_DATA_DIR`` names one.

    ``$XDG_DATA_HOME/diskplane`` (``~/.local/share/diskplane``) for a user;
    ``/var/lib/diskplane`` for root unless ``XDG_DATA_HOME`` is set.
    """
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg) / "diskplane"
    if os.geteuid() == 0:
        return SYSTEM_DATA_DIR
    return Path.home() / ".local" / "share" / "diskplane"


def resolve_data_dir(flag: str | None) -> Path:
    """``--data-dir`` wins over ``DISKPLANE_DATA_DIR``, which wins over the default."""
    chosen = flag or os.environ.get(DATA_DIR_ENV)
    return Path(chosen).expanduser().resolve() if chosen else default_data_dir()
