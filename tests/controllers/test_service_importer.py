"""The DataVolume reconciler over the importer service's HTTP API (ServiceImporter).

The real service (``cdi.service.create_app``) serves on 127.0.0.1; sources are
the suite's HTTP file server and moto's S3.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cdi import VolumePool
from cdi.service import ImporterClient, ServiceSettings, create_app
from controllers.api import DATAVOLUME
from controllers.api.kinds import SECRET
from controllers.reconcile import Controller, EventRecorder
from controllers.reconcilers import DataVolumeReconciler, ImportJob, ImportState
from controllers.reconcilers.service_importer import ServiceImporter, import_request
from controllers.store import EmbeddedStore
from controllers.up import serving
from tests.controllers.test_datavolume_reconciler import (
    MiB,
    dv,
    statuses_until,
    statuses_until_deleted,
    write_disk,
)
from tests.support.http_server import Faults, FileServer
from tests.support.s3 import S3Server


@dataclass
class Stack:
    store: EmbeddedStore
    pool: VolumePool
    url: str
    data_dir: Path


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    store = await EmbeddedStore.open(tmp_path)
    app = create_app(ServiceSettings(data_dir=tmp_path, persist_interval_seconds=0.05))
    async with serving(app, "127.0.0.1:0") as url:
        importer = ServiceImporter(url, data_dir=tmp_path)
        reconciler = DataVolumeReconciler(store, importer, EventRecorder(store))
        controller = Controller("datavolumes", store, DATAVOLUME, reconciler)
        importer.set_listener(controller.enqueue)
        task = asyncio.create_task(controller.run(), name="dv-controller")
        try:
            yield Stack(store, VolumePool.for_data_dir(tmp_path), url, tmp_path)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await importer.close()
            await store.close()


async def jobs(url: str) -> list[dict[str, object]]:
    async with ImporterClient(url) as client:
        return [job.raw for job in await client.list_imports()]


async def test_http_import_through_the_service_with_progress(
    stack: Stack, http_server: FileServer
) -> None:
    checksum = write_disk(http_server.root, "disk.raw", 32 * MiB)
    source = {"http": {"url": http_server.url("disk.raw"), "checksum": checksum}}
    created = await stack.store.create(DATAVOLUME, dv("web", source))
    seen = await statuses_until(
        stack.store, "web", {"Succeeded", "Failed"}, created["metadata"]["resourceVersion"]
    )
    assert seen[-1]["phase"] == "Succeeded", seen[-1]
    assert seen[-1]["progress"] == "100.00%"
    percents = [
        float(s["progress"].rstrip("%"))
        for s in seen
        if s.get("phase") == "ImportInProgress" and s.get("progress", "N/A") != "N/A"
    ]
    assert percents == sorted(percents)
    (job,) = await jobs(stack.url)  # one service job, labelled with the DataVolume's uid
    assert job["ownerUID"] == created["metadata"]["uid"]
    assert job["checksum"] == checksum
    served = (http_server.root / "disk.raw").read_bytes()
    volume = stack.pool.get("default", "web")
    with volume.disk_path.open("rb") as handle:
        assert handle.read(len(served)) == served

    # a restarted controller finds the job instead of importing again
    again = ServiceImporter(stack.url, data_dir=stack.data_dir)
    try:
        job_spec = ImportJob("default", "web", created["metadata"]["uid"], 1, source)
        status = await again.ensure(job_spec)
    finally:
        await again.close()
    assert status.state == ImportState.SUCCEEDED
    assert len(await jobs(stack.url)) == 1


async def test_bad_checksum_fails_with_the_services_reason(
    stack: Stack, http_server: FileServer
) -> None:
    write_disk(http_server.root, "disk.raw", 2 * MiB)
    source = {"http": {"url": http_server.url("disk.raw"), "checksum": "sha256:" + "0" * 64}}
    await stack.store.create(DATAVOLUME, dv("bad", source))
    final = (await statuses_until(stack.store, "bad", {"Succeeded", "Failed"}))[-1]
    assert final["phase"] == "Failed"
    running = next(c for c in final["conditions"] if c["type"] == "Running")
    assert running["reason"] == "ChecksumError"
    assert running["message"]


async def test_delete_mid_import_cancels_the_service_job(
    stack: Stack, http_server: FileServer
) -> None:
    write_disk(http_server.root, "slow.raw", 4 * MiB)
    http_server.set_faults("slow.raw", Faults(stall_seconds=5))
    await stack.store.create(DATAVOLUME, dv("slow", {"http": {"url": http_server.url("slow.raw")}}))
    await statuses_until(stack.store, "slow", {"ImportInProgress"})
    listing = await stack.store.list(DATAVOLUME, "default")
    await stack.store.delete(DATAVOLUME, "default", "slow")
    await statuses_until_deleted(stack.store, "slow", listing.resource_version)
    (job,) = await jobs(stack.url)
    assert job["phase"] == "Cancelled"
    assert not (stack.pool.root / "default" / "slow").exists()


async def test_s3_secret_ref_is_handed_to_the_service(stack: Stack, s3_server: S3Server) -> None:
    data = os.urandom(3 * MiB)
    s3_server.create_bucket("disks")
    s3_server.put_object("disks", "disk.raw", data)
    keys = {"accessKeyId": s3_server.access_key, "secretKey": s3_server.secret_key}
    await stack.store.create(
        SECRET,
        {
            "metadata": {"name": "s3-keys", "namespace": "default"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()},
        },
    )
    source = {
        "s3": {
            "url": "s3://disks/disk.raw",
            "endpoint": s3_server.endpoint_url,
            "secretRef": "s3-keys",
            "checksum": "sha256:" + hashlib.sha256(data).hexdigest(),
        }
    }
    await stack.store.create(DATAVOLUME, dv("from-s3", source, "8Mi"))
    final = (await statuses_until(stack.store, "from-s3", {"Succeeded", "Failed"}))[-1]
    assert final["phase"] == "Succeeded", final
    secret_file = stack.data_dir / "secrets" / "default" / "s3-keys.yaml"
    assert secret_file.stat().st_mode & 0o777 == 0o600


def test_import_request_moves_the_checksum_and_fills_the_clone_namespace() -> None:
    job = ImportJob("ns", "copy", "uid-1", 1024, {"pvc": {"name": "orig"}})
    assert import_request(job) == {
        "source": {"pvc": {"name": "orig", "namespace": "ns"}},
        "target": {"namespace": "ns", "name": "copy"},
        "size": "1024",
        "ownerUID": "uid-1",
    }
    http = ImportJob(
        "ns", "d", "u", 1, {"http": {"url": "http://x/d", "checksum": "md5:" + "0" * 32}}
    )
    request = import_request(http)
    assert request["source"] == {"http": {"url": "http://x/d"}}
    assert request["checksum"] == "md5:" + "0" * 32
