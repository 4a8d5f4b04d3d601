"""kill -9 the service during imports, start it again: nothing lost, nothing fetched twice."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdi import VolumePool
from tests.cdi.service.conftest import MiB, raw_equal, write_sparse_raw
from tests.cdi.service.servicectl import ServiceProcess
from tests.support.http_server import Faults

NAMES = ("d0", "d1", "d2", "gone")
# Each GET waits this long before its body: slow enough to kill between two waves of ranges.
STALL = 3.0


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def started(data_dir: Path, tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    """Processes started by the test; whatever still runs is stopped at the end."""
    processes: list[ServiceProcess] = []
    yield processes
    for process in processes:
        process.stop()


def _journal(data_dir: Path, name: str) -> list[tuple[int, int]]:
    path = data_dir / "volumes" / "default" / name / "import.journal.json"
    try:
        return [(int(s), int(e)) for s, e in json.loads(path.read_text())["done"]]
    except (OSError, ValueError, KeyError):
        return []


def _completed(http_server: Any, name: str) -> list[tuple[int, int]]:
    """Ranges ``[start, end)`` the server finished sending for ``name``."""
    return [
        (r.range[0], r.range[1] + 1)
        for r in list(http_server.log)
        if r.method == "GET"
        and r.completed
        and r.path.endswith(name)
        and r.range
        and r.range[1] is not None
    ]


def _covered(ranges: list[tuple[int, int]], by: list[tuple[int, int]]) -> bool:
    return all(any(s <= a and b <= e for s, e in by) for a, b in ranges)


def test_sigkill_mid_import_then_restart_resumes_without_refetching(
    http_server: Any, data_dir: Path, tmp_path: Path, started: list[ServiceProcess]
) -> None:
    images = {
        n: write_sparse_raw(http_server.root / f"{n}.raw", 16 * MiB, seed=i)
        for i, n in enumerate(NAMES)
    }
    for name in NAMES:
        http_server.set_faults(f"{name}.raw", Faults(stall_seconds=STALL))
    service = ServiceProcess.start(data_dir, tmp_path / "service1.log")
    started.append(service)
    blank = service.call(
        "POST",
        "/v1/imports",
        {
            "source": {"blank": {}},
            "target": {"namespace": "default", "name": "done"},
            "size": "8Mi",
        },
    )
    assert service.wait_finished(blank["id"])["phase"] == "Succeeded"
    jobs = {
        name: service.call(
            "POST",
            "/v1/imports",
            {
                "source": {"http": {"url": http_server.url(f"{name}.raw")}},
                "target": {"namespace": "default", "name": name},
                "size": "32Mi",
            },
        )["id"]
        for name in NAMES
    }

    def journalled_midway() -> bool:
        for name in NAMES:
            done, journal = _completed(http_server, f"{name}.raw"), _journal(data_dir, name)
            if not done or not journal or not _covered(done, journal):
                return False
        return True

    service.wait_until(journalled_midway, "a first wave of ranges, journalled, in every import")
    service.kill9()
    before = {name: _completed(http_server, f"{name}.raw") for name in NAMES}
    log_mark = len(http_server.log)
    assert all(before.values())
    for name in NAMES:
        assert _covered(before[name], _journal(data_dir, name))
        assert not (data_dir / "volumes" / "default" / name / "disk.img").exists()
    # Someone deletes one volume while the service is down.
    VolumePool.for_data_dir(data_dir).delete("default", "gone")

    service = ServiceProcess.start(data_dir, tmp_path / "service2.log")
    started.append(service)
    for name in ("d0", "d1", "d2"):
        final = service.wait_finished(jobs[name])
        assert final["phase"] == "Succeeded", final
        disk = data_dir / "volumes" / "default" / name / "disk.img"
        assert raw_equal(disk, images[name])
    gone = service.wait_finished(jobs["gone"])
    assert gone["phase"] == "Failed"
    assert gone["reason"] == "VolumeDeleted"
    assert not (data_dir / "volumes" / "default" / "gone").exists()
    assert service.job(blank["id"])["phase"] == "Succeeded"
    # No range that had been completed before the kill was asked for again, not
    # even the 64 KiB format probe (the pipeline keeps it beside the journal and
    # revalidates it with a HEAD).
    for record in list(http_server.log)[log_mark:]:
        if record.method != "GET" or record.range is None:
            continue
        name = Path(record.path).stem
        last = record.range[1] if record.range[1] is not None else 16 * MiB - 1
        for start, end in before.get(name, []):
            assert last < start or record.range[0] >= end, (name, record.range, (start, end))
