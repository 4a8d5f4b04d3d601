"""Prometheus text exposition for the agent (no client library at runtime)."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
PHASES = ("Pending", "Scheduled", "Running", "Succeeded", "Failed")


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        sep = "," if labels else ""
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {running}')
        out.append(f"{name}_sum{{{labels}}} {self.total}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


class AgentMetrics:
    def __init__(self) -> None:
        self.qmp_latency: dict[str, Histogram] = {}
        self.migrations = Counter[str]()
        self.last_migration: dict[str, float] = {}

    def observe_qmp(self, command: str, seconds: float) -> None:
        self.qmp_latency.setdefault(command, Histogram()).observe(seconds)

    def record_migration(self, result: str, stats: Mapping[str, Any]) -> None:
        self.migrations[result] += 1
        for key, name in (
            ("totalTimeMs", "total_time_ms"),
            ("downtimeMs", "downtime_ms"),
            ("transferredBytes", "transferred_bytes"),
        ):
            value = stats.get(key)
            if isinstance(value, int | float):
                self.last_migration[name] = float(value)

    def render(self, phases: Iterable[str]) -> str:
        counts = Counter(phases)
        lines = [
            "# HELP diskplane_vmis VMIs on this node by phase.",
            "# TYPE diskplane_vmis gauge",
            *(f'diskplane_vmis{{phase="{p}"}} {counts.get(p, 0)}' for p in PHASES),
            "# HELP diskplane_qmp_command_seconds QMP command round-trip time.",
            "# TYPE diskplane_qmp_command_seconds histogram",
        ]
        for command, hist in sorted(self.qmp_latency.items()):
            lines += hist.lines("diskplane_qmp_command_seconds", f'command="{command}"')
        lines += [
            "# HELP diskplane_migrations_total Live migrations by result.",
            "# TYPE diskplane_migrations_total counter",
            *(
                f'diskplane_migrations_total{{result="{r}"}} {n}'
                for r, n in self.migrations.items()
            ),
        ]
        for key, value in sorted(self.last_migration.items()):
            lines += [
                f"# TYPE diskplane_last_migration_{key} gauge",
                f"diskplane_last_migration_{key} {value}",
            ]
        return "\n".join(lines) + "\n"
