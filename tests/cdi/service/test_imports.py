"""Imports through the service on the real pipeline: HTTP with SSE and metrics, cancel, S3."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.cdi.service.conftest import MiB, Service, raw_equal, write_sparse_raw
from tests.support.http_server import Faults

TARGET = {"namespace": "default", "name": "disk1"}


def _http(url: str, size: str = "32Mi", **extra: Any) -> dict[str, Any]:
    return {"source": {"http": {"url": url}}, "target": TARGET, "size": size, **extra}


async def _progress_metric(service: Service, owner: str) -> float | None:
    text = await (await service.client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            metric = sample.name == "kubevirt_cdi_import_progress_total"
            if metric and sample.labels.get("ownerUID") == owner:
                return float(sample.value)
    return None


async def test_http_import_streams_progress_and_the_metric_moves(
    service: Service, http_server: Any
) -> None:
    image = write_sparse_raw(http_server.root / "disk.raw", 32 * MiB)
    # Each GET waits before its body, so ranges arrive in waves: between two waves
    # the progress is neither 0 nor 100.
    http_server.set_faults("disk.raw", Faults(stall_seconds=0.5))
    job = await service.create(_http(http_server.url("disk.raw"), size="64Mi", ownerUID="dv-uid-1"))
    # At most half read: at least two more stalled waves remain to look at the metric.
    middle = await service.wait_for(
        job["id"], lambda s: s["phase"] == "Running" and 0 < s["bytesRead"] <= 16 * MiB
    )
    assert middle["progress"].endswith("%")
    during = await _progress_metric(service, "dv-uid-1")
    assert during is not None
    assert 0 < during < 100
    final = await service.wait(job["id"])
    assert final["phase"] == "Succeeded", final
    assert final["progress"] == "100.00%"
    assert final["bytesRead"] == 32 * MiB
    assert await _progress_metric(service, "dv-uid-1") == 100.0
    assert raw_equal(service.pool.get("default", "disk1").disk_path, image)


async def test_cancel_mid_transfer_removes_partial_data_and_frees_capacity(
    service: Service, http_server: Any
) -> None:
    write_sparse_raw(http_server.root / "slow.raw", 16 * MiB)
    # Ranges arrive in slow waves; cancel lands while the second wave is pending.
    http_server.set_faults("slow.raw", Faults(stall_seconds=1.0))
    job = await service.create(_http(http_server.url("slow.raw")))
    await service.wait_for(job["id"], lambda s: s["bytesWritten"] > 0)
    volume_dir = service.pool.get("default", "disk1").directory
    assert any(volume_dir.iterdir())
    response = await service.client.delete(f"/v1/imports/{job['id']}")
    cancelled = await response.json()
    assert cancelled["phase"] == "Cancelled"
    assert not volume_dir.exists()
    assert service.pool.list() == []
    requests = len(http_server.log)
    assert (await service.job(job["id"]))["phase"] == "Cancelled"
    await asyncio.sleep(0)  # the transfer task is gone: nothing new reaches the server
    assert len(http_server.log) == requests
    # The capacity is free again: the same volume can be imported into at once.
    again = await service.create({"source": {"blank": {}}, "target": TARGET, "size": "8Mi"})
    assert (await service.wait(again["id"]))["phase"] == "Succeeded"


async def test_cancel_into_a_pre_existing_volume_keeps_the_volume(
    service: Service, http_server: Any
) -> None:
    write_sparse_raw(http_server.root / "slow.raw", 16 * MiB)
    http_server.set_faults("slow.raw", Faults(stall_seconds=1.0))
    volume = service.pool.create("default", "disk1", 32 * MiB)  # made before the import
    job = await service.create(_http(http_server.url("slow.raw")))
    await service.wait_for(job["id"], lambda s: s["bytesWritten"] > 0)
    assert volume.partial_path.exists()
    response = await service.client.delete(f"/v1/imports/{job['id']}")
    assert (await response.json())["phase"] == "Cancelled"
    kept = service.pool.get("default", "disk1")
    assert kept.capacity == 32 * MiB
    assert kept.state() == "Empty"
    assert sorted(p.name for p in kept.directory.iterdir()) == [".lock", "volume.json"]


async def test_s3_import(service: Service, s3_server: Any, tmp_path: Path) -> None:
    image = write_sparse_raw(tmp_path / "s3.raw", 8 * MiB, seed=5)
    s3_server.create_bucket("images")
    s3_server.put_object("images", "disk.raw", image)
    secrets = service.settings.data_dir / "secrets" / "default"
    secrets.mkdir(parents=True)
    (secrets / "s3-keys.yaml").write_text("accessKeyId: test\nsecretKey: test\n")
    source = {
        "url": "s3://images/disk.raw",
        "endpoint": s3_server.endpoint_url,
        "secretRef": "s3-keys",
    }
    body = {
        "source": {"s3": source},
        "target": TARGET,
        "size": "16Mi",
    }
    final = await service.wait((await service.create(body))["id"])
    assert final["phase"] == "Succeeded", final
    assert raw_equal(service.pool.get("default", "disk1").disk_path, image)


async def test_missing_source_is_a_final_failure_with_no_volume(
    service: Service, http_server: Any
) -> None:
    final = await service.wait((await service.create(_http(http_server.url("nope.raw"))))["id"])
    assert final["phase"] == "Failed"
    assert final["reason"]
    assert final["retries"] == 0
    assert service.pool.list() == []
