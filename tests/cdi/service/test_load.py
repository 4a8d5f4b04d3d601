"""20 concurrent imports of different sources finish correctly under a fixed RSS ceiling."""

from __future__ import annotations

import bz2
import gzip
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cdi.service.conftest import MiB, qemu_img, raw_equal, write_sparse_raw
from tests.cdi.service.servicectl import ServiceProcess

# The documented ceiling (docs/importer-service.md) for 20 concurrent imports.
RSS_CEILING = 384 * MiB
IMAGE_SIZE = 24 * MiB


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess.start(
        tmp_path / "data", tmp_path / "service.log", "--max-running", "20"
    )
    yield process
    process.stop()


def _images(root: Path, tmp_path: Path) -> dict[str, Path]:
    """Served file name -> the raw disk it must import as."""
    served: dict[str, Path] = {}
    for i in range(4):
        raw = write_sparse_raw(tmp_path / f"r{i}.raw", IMAGE_SIZE, seed=100 + i)
        kinds = {"raw": raw.read_bytes()}
        qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(root / f"r{i}.qcow2"))
        (root / f"r{i}.raw").write_bytes(kinds["raw"])
        (root / f"r{i}.raw.gz").write_bytes(gzip.compress(kinds["raw"], 1))
        (root / f"r{i}.raw.bz2").write_bytes(bz2.compress(kinds["raw"], 1))
        for name in (f"r{i}.raw", f"r{i}.qcow2", f"r{i}.raw.gz", f"r{i}.raw.bz2"):
            served[name] = raw
    return served


def test_twenty_concurrent_imports_stay_under_the_rss_ceiling(
    service: ServiceProcess, http_server: Any, s3_server: Any, tmp_path: Path
) -> None:
    served = _images(http_server.root, tmp_path)
    requests: dict[str, tuple[dict[str, Any], Path | None]] = {}
    for index, (name, raw) in enumerate(sorted(served.items())):  # 16 HTTP imports
        source = {"http": {"url": http_server.url(name)}}
        requests[f"h{index}"] = (source, raw)
    s3_server.create_bucket("load")
    secrets = tmp_path / "data" / "secrets" / "load"
    secrets.mkdir(parents=True)
    (secrets / "keys.yaml").write_text("accessKeyId: a\nsecretKey: b\n")
    for index in range(2):  # 2 S3 imports
        raw = served[f"r{index}.raw"]
        s3_server.put_object("load", f"s{index}.raw", raw)
        source = {
            "s3": {
                "url": f"s3://load/s{index}.raw",
                "endpoint": s3_server.endpoint_url,
                "secretRef": "keys",
            }
        }
        requests[f"s{index}"] = (source, raw)
    for index in range(2):  # 2 blank volumes
        requests[f"b{index}"] = ({"blank": {}}, None)
    assert len(requests) == 20

    started = time.monotonic()
    jobs = {
        name: service.call(
            "POST",
            "/v1/imports",
            {"source": source, "target": {"namespace": "load", "name": name}, "size": "32Mi"},
        )
        for name, (source, _) in requests.items()
    }
    running = max(
        sum(1 for j in service.call("GET", "/v1/imports")["items"] if j["phase"] == "Running")
        for _ in range(3)
    )
    finals = {name: service.wait_finished(job["id"]) for name, job in jobs.items()}
    elapsed = time.monotonic() - started
    peak = service.peak_rss()
    print(
        f"20 imports in {elapsed:.1f} s, peak RSS {peak / MiB:.0f} MiB, "
        f"up to {running} seen running at once"
    )
    for name, final in finals.items():
        assert final["phase"] == "Succeeded", (name, final)
        expected = requests[name][1]
        if expected is not None:
            disk = tmp_path / "data" / "volumes" / "load" / name / "disk.img"
            assert raw_equal(disk, expected), name
    assert peak < RSS_CEILING
