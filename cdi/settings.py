"""Named, documented knobs of the import pipeline (timeouts, retries, sizes)."""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True)
class ImportSettings:
    """Everything tunable about one import; defaults suit a small machine."""

    #: Parallel ranged GETs against a source that supports ranges.
    concurrency: int = 4
    #: Bytes per ranged request (and per unit of resume bookkeeping).
    chunk_size: int = 8 * MiB
    #: CDI's filesystem overhead: usable = capacity * (1 - overhead), 1 MiB aligned.
    filesystem_overhead: float = 0.06
    #: Consecutive failed attempts without progress before giving up.
    max_retries: int = 8
    #: First backoff delay; doubles per consecutive failure up to backoff_max.
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    #: Longest Retry-After we honour; larger values are capped.
    max_retry_after: float = 60.0
    #: Seconds to establish a connection.
    connect_timeout: float = 30.0
    #: Seconds without a byte before a transfer counts as stalled (retryable).
    read_timeout: float = 60.0
    #: Limits for `qemu-img info` (KubeVirt's qcow2-bomb defence) and convert memory.
    qemu_img_cpu_seconds: int = 30
    qemu_img_memory_bytes: int = 1 * GiB
    #: Seconds allowed for `qemu-img info` to answer.
    qemu_img_info_timeout: float = 30.0
    #: Threads decoding (decompressing, hashing, writing) off the event loop.
    decode_threads: int = 2
    #: Seconds between journal saves (each preceded by fdatasync of the disk).
    journal_interval: float = 1.0
    #: Seconds between progress events during transfer.
    progress_interval: float = 0.2
