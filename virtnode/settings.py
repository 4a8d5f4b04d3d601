"""Named settings of the node agent: every timeout, limit and path in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from virtnode.argv import DEFAULT_EMULATOR, DEFAULT_HOTPLUG_PORTS

#: Environment variable that makes tests and benches pick an accelerator without probing.
ACCEL_ENV = "DISKPLANE_ACCEL"


@dataclass(frozen=True)
class QmpTimeouts:
    """How long each kind of QMP interaction may take (seconds)."""

    #: Until the monitor socket accepts and the capabilities handshake completes.
    connect: float = 10.0
    #: One ordinary command (query-status, cont, stop, device_add, ...).
    command: float = 10.0
    #: Commands that open or create files (blockdev-add, snapshots, block_resize).
    block: float = 30.0


@dataclass(frozen=True)
class AgentSettings:
    """Everything the node agent needs to know about its host."""

    data_dir: Path
    #: Volumes (PVC / DataVolume) live at ``<volume_dir>/<namespace>/<name>/disk.img``.
    volume_dir: Path | None = None
    node_name: str = "local"
    #: ``qemu`` (the agent runs QEMU itself) or ``libvirt`` (transient libvirt domains).
    driver: str = "qemu"
    libvirt_uri: str = "qemu:///system"
    emulator: str = DEFAULT_EMULATOR
    hotplug_ports: int = DEFAULT_HOTPLUG_PORTS
    qmp: QmpTimeouts = field(default_factory=QmpTimeouts)
    #: QEMU must have daemonized (monitor listening) within this time.
    launch_timeout: float = 30.0
    #: After ``quit``, how long QEMU may take to exit before it is killed.
    quit_timeout: float = 5.0
    #: After SIGKILL, how long until the process must be gone.
    kill_timeout: float = 5.0
    #: Events kept per VM for the event stream before the oldest are dropped.
    event_queue_size: int = 256
    #: Bytes of serial console output each VM keeps for late console clients.
    console_backlog_bytes: int = 256 * 1024
    #: How often a process without a pidfd is polled for exit (seconds).
    exit_poll_interval: float = 0.5
    #: Run QEMU as this user when the agent is root (created when missing).
    qemu_user: str = "qemu"
    qemu_uid: int = 107
    #: How long the guest may take to release an unplugged disk (DEVICE_DELETED).
    unplug_timeout: float = 30.0
    #: How long a block job (mirror, commit) may take to become ready and to finish.
    block_job_timeout: float = 300.0
    #: Migration defaults (bytes/s and ms); QEMU 7.2's default cap is 128 MiB/s.
    migration_max_bandwidth: int = 8 * 2**30
    migration_downtime_limit_ms: int = 300
    migration_timeout: float = 300.0
    #: Address this node's migration targets listen on (incoming migration, NBD).
    migration_address: str = "127.0.0.1"
    #: Finished VMIs (Succeeded/Failed) kept on disk across agent restarts until deleted:
    #: at most this many, none older than ``finished_keep_seconds``.
    finished_keep_count: int = 100
    finished_keep_seconds: float = 7 * 24 * 3600.0

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def volumes(self) -> Path:
        return self.volume_dir or self.data_dir / "volumes"

    @property
    def finished_dir(self) -> Path:
        return self.data_dir / "finished"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache" / "containerdisks"
