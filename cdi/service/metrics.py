"""Prometheus text exposition of the service's counters and gauges.

Written by hand (the format is small) so the service needs no client
library at run time; the tests parse it with ``prometheus_client``'s parser.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

# Per-job series kept for finished jobs, newest first; older ones are dropped.
FINISHED_SERIES_KEPT = 200

PROGRESS = "kubevirt_cdi_import_progress_total"


@dataclass
class _JobSeries:
    progress: float = 0.0
    source_bytes: int = 0
    written_bytes: int = 0
    finished: bool = False


@dataclass
class ServiceMetrics:
    """Everything ``/metrics`` shows except the gauges the scheduler computes."""

    jobs: OrderedDict[str, _JobSeries] = field(default_factory=OrderedDict)
    bytes_transferred: int = 0
    bytes_written: int = 0
    upload_bytes: int = 0
    retries: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    completed: int = 0

    def observe(self, owner_uid: str, progress: float, source_bytes: int, written: int) -> None:
        series = self.jobs.setdefault(owner_uid, _JobSeries())
        self.bytes_transferred += max(source_bytes - series.source_bytes, 0)
        self.bytes_written += max(written - series.written_bytes, 0)
        series.progress = max(series.progress, progress)
        series.source_bytes = max(series.source_bytes, source_bytes)
        series.written_bytes = max(series.written_bytes, written)

    def restart(self, owner_uid: str) -> None:
        """A job starts over from the pipeline's journal; keep its counters monotonic."""
        self.jobs.setdefault(owner_uid, _JobSeries())

    def finish(self, owner_uid: str, reason: str | None) -> None:
        series = self.jobs.setdefault(owner_uid, _JobSeries())
        series.finished = True
        self.jobs.move_to_end(owner_uid)
        if reason is None:
            series.progress = 100.0
            self.completed += 1
        else:
            self.failures[reason] = self.failures.get(reason, 0) + 1
        finished = [uid for uid, s in self.jobs.items() if s.finished]
        for uid in finished[:-FINISHED_SERIES_KEPT]:
            del self.jobs[uid]

    def render(self, phases: dict[str, int], queue_length: int, running: int) -> str:
        out: list[str] = []
        for name, kind, help_text, samples in self._families(phases, queue_length, running):
            _family(out, name, kind, help_text, samples)
        return "\n".join(out) + "\n"

    def _families(
        self, phases: dict[str, int], queue_length: int, running: int
    ) -> list[tuple[str, str, str, list[tuple[str, float]]]]:
        series = list(self.jobs.items())

        def per_job(field: str) -> list[tuple[str, float]]:
            return [(f'ownerUID="{_esc(uid)}"', getattr(s, field)) for uid, s in series]

        return [
            (
                PROGRESS,
                "counter",
                "Import progress in percent, by ownerUID (CDI's name).",
                per_job("progress"),
            ),
            (
                "diskplane_import_source_bytes_total",
                "counter",
                "Source bytes read by each job.",
                per_job("source_bytes"),
            ),
            (
                "diskplane_import_written_bytes_total",
                "counter",
                "Bytes written to the volume by each job.",
                per_job("written_bytes"),
            ),
            (
                "diskplane_import_jobs",
                "gauge",
                "Jobs by phase.",
                [(f'phase="{_esc(p)}"', n) for p, n in sorted(phases.items())],
            ),
            (
                "diskplane_import_queue_length",
                "gauge",
                "Jobs waiting for a slot.",
                [("", queue_length)],
            ),
            ("diskplane_import_running", "gauge", "Jobs transferring now.", [("", running)]),
            (
                "diskplane_import_retries_total",
                "counter",
                "Job restarts after a retryable failure.",
                [("", self.retries)],
            ),
            (
                "diskplane_import_failures_total",
                "counter",
                "Failed jobs by reason.",
                [(f'reason="{_esc(r)}"', n) for r, n in sorted(self.failures.items())],
            ),
            (
                "diskplane_import_completed_total",
                "counter",
                "Jobs that succeeded.",
                [("", self.completed)],
            ),
            (
                "diskplane_import_transferred_bytes_total",
                "counter",
                "Source bytes read by all jobs.",
                [("", self.bytes_transferred)],
            ),
            (
                "diskplane_import_volume_written_bytes_total",
                "counter",
                "Bytes written to volumes by all jobs.",
                [("", self.bytes_written)],
            ),
            (
                "diskplane_upload_received_bytes_total",
                "counter",
                "Upload bytes received.",
                [("", self.upload_bytes)],
            ),
        ]


def _family(
    out: list[str], name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]
) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        label_text = f"{{{labels}}}" if labels else ""
        out.append(f"{name}{label_text} {_num(value)}")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
