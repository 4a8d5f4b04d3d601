"""Non-root QEMU: who QEMU runs as, and giving that user exactly its own files.

When the agent is root, QEMU runs as the ``qemu`` user (uid/gid 107, created
with ``useradd`` if missing); otherwise as the agent's own user and nothing is
chowned. Only the VM's run dir, its ephemeral disks and the volumes it uses
are handed to uid 107; every directory above them must be searchable by
others, which :func:`check_reachable` verifies with an actionable message.
QEMU's only supplementary group is the one owning ``/dev/kvm`` (if any).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
import subprocess
from pathlib import Path

from virtnode.errors import LaunchError
from virtnode.process import RunAs

USERADD_TIMEOUT = 30.0
KVM_DEVICE = "/dev/kvm"


def qemu_run_as(user: str, uid: int) -> RunAs | None:
    """The identity QEMU runs under; ``None`` means "same as the agent" (blocking)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        _create_user(user, uid)
        entry = pwd.getpwnam(user)
    groups: tuple[int, ...] = ()
    with contextlib.suppress(OSError):
        groups = (os.stat(KVM_DEVICE).st_gid,)  # /dev/kvm is usually root:kvm 0660
    return RunAs(uid=entry.pw_uid, gid=entry.pw_gid, groups=groups)


def _create_user(user: str, uid: int) -> None:
    try:
        grp.getgrgid(uid)
        group_args = ["--gid", str(uid)]
    except KeyError:
        subprocess.run(
            ["groupadd", "--system", "--gid", str(uid), user],
            check=True,
            capture_output=True,
            timeout=USERADD_TIMEOUT,
        )
        group_args = ["--gid", str(uid)]
    argv = ["useradd", "--system", "--uid", str(uid), *group_args, "--no-create-home"]
    argv += ["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", user]
    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=USERADD_TIMEOUT)
    except (subprocess.CalledProcessError, OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(
            f"could not create the {user!r} user (uid {uid}) that QEMU runs as: {exc}; "
            f"create it by hand: useradd --system --uid {uid} {user}"
        ) from exc


def grant(path: Path, run_as: RunAs | None) -> None:
    """Give ``path`` to QEMU's user (no-op when QEMU runs as the agent's user)."""
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)


def check_reachable(path: Path, run_as: RunAs | None) -> None:
    """Fail clearly when QEMU's user cannot traverse the directories above ``path``."""
    if run_as is None:
        return
    for parent in path.parents:
        st = parent.stat()
        if st.st_uid == run_as.uid or st.st_mode & stat.S_IXOTH:
            continue
        if st.st_gid == run_as.gid and st.st_mode & stat.S_IXGRP:
            continue
        raise LaunchError(
            f"QEMU runs as uid {run_as.uid} and cannot reach {path}: directory {parent} is not "
            f"searchable by others; run 'chmod o+x {parent}' or choose another --data-dir"
        )
