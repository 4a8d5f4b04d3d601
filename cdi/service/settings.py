"""Settings of the importer service; every limit and timeout is named here."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cdi.service.errors import ServiceConfigError

DEFAULT_PORT = 8444


@dataclass(frozen=True)
class ServiceSettings:
    """What ``diskplane importer serve`` runs with.

    ``state_dir`` holds the job database, the upload signing key and upload
    staging files; it defaults to ``<data_dir>/importer``.
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # At most this many imports transfer at once; the rest wait in the queue.
    max_running: int = 4
    # Jobs accepted beyond the running ones; more answer 429.
    max_queued: int = 1000
    # Per-job read buffer bound handed to the pipeline (bytes in flight per job).
    job_buffer_bytes: int = 8 * 1024 * 1024
    # Retries of a whole job after a retryable failure, with exponential backoff.
    job_retries: int = 3
    job_retry_backoff_seconds: float = 1.0
    # Upload tokens live this long unless the request asks for less.
    upload_token_ttl_seconds: int = 300
    upload_token_max_ttl_seconds: int = 24 * 3600
    # A single upload request body may go quiet this long before it is dropped.
    upload_read_timeout_seconds: float = 300.0
    # How long a sync upload waits for its import after the last byte.
    upload_sync_timeout_seconds: float = 24 * 3600.0
    # A streamed upload (raw, iso, compressed) holds its job's slot while it waits
    # for a continuation after a dropped request; it fails after this long.
    upload_resume_timeout_seconds: float = 900.0
    # Pieces (up to 1 MiB each) buffered between a streamed upload and its decoder.
    upload_stream_pieces: int = 8
    # SSE keep-alive comment interval (keeps proxies from closing idle streams).
    events_heartbeat_seconds: float = 15.0
    # Bearer token for /v1/imports (None: no auth; only allowed on loopback).
    api_token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Serve a non-loopback address without TLS and token (documented as unsafe).
    allow_insecure: bool = False
    # Seconds between progress metric updates persisted to the job store.
    persist_interval_seconds: float = 1.0
    # Grace period for running jobs on shutdown before they are cancelled.
    shutdown_timeout_seconds: float = 10.0

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "importer"

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def validate(self) -> None:
        """Refuse settings that would expose the service or cannot work."""
        if self.max_running < 1:
            raise ServiceConfigError("max_running must be at least 1")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ServiceConfigError("TLS needs both a certificate file and a key file")
        exposed = not self.allow_insecure and not _is_loopback(self.host)
        if exposed and (self.api_token is None or not self.tls):
            raise ServiceConfigError(
                f"listening on {self.host} (not loopback) needs --tls-cert/--tls-key and "
                "an API token file; pass --allow-insecure to serve without them"
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
