"""100 blank DataVolumes applied at once: time until all Succeeded, and store work per DV.

    .venv/bin/python bench/controllers.py [--count 100] [--kube]

Embedded: the SQLite store, the DataVolume controller and the in-process
importer in a temp data dir; reports wall time and store operations per DV.
``--kube`` runs the same controller against a real kube-apiserver + etcd (+
controller-manager) started from the suite's cached binaries, and reports API
requests per DV. Results go to bench/README.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdi import VolumePool
from controllers.api import DATAVOLUME, NAMESPACE
from controllers.reconcile import Controller, EventRecorder
from controllers.reconcilers import DataVolumeReconciler
from controllers.reconcilers.local_importer import LocalImporter
from controllers.store import EmbeddedStore, Store

TIMEOUT_S = 600.0


def blank(name: str, namespace: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"blank": {}},
            "storage": {"resources": {"requests": {"storage": "64Mi"}}},
        },
    }


async def run_all(store: Store, pool_dir: Path, namespace: str, count: int, local: bool) -> float:
    importer = LocalImporter(VolumePool.for_data_dir(pool_dir))
    reconciler = DataVolumeReconciler(
        store, importer, EventRecorder(store), bind_claims_locally=local
    )
    controller = Controller("datavolumes", store, DATAVOLUME, reconciler, workers=4)
    importer.set_listener(controller.enqueue)
    task = asyncio.create_task(controller.run(), name="bench-dv-controller")
    try:
        listing = await store.list(DATAVOLUME, namespace)
        started = time.monotonic()
        await asyncio.gather(
            *(store.create(DATAVOLUME, blank(f"dv-{i:03d}", namespace)) for i in range(count))
        )
        done: set[str] = set()

        async def follow() -> None:
            async for event in store.watch(DATAVOLUME, namespace, listing.resource_version):
                if (event.object.get("status") or {}).get("phase") == "Succeeded":
                    done.add(event.object["metadata"]["name"])
                    if len(done) == count:
                        return

        await asyncio.wait_for(follow(), TIMEOUT_S)
        return time.monotonic() - started
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await importer.close()


async def embedded(count: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-controllers-"))
    try:
        store = await EmbeddedStore.open(work)
        try:
            seconds = await run_all(store, work, "default", count, local=True)
            ops = store.operations
        finally:
            await store.close()
        print(
            f"embedded: {count} blank DVs Succeeded in {seconds:.2f} s "
            f"({count / seconds:.1f} DV/s); {ops} store operations, {ops / count:.1f} per DV"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def kube(count: int) -> None:
    from controllers.store.kubernetes import KubernetesStore
    from tests.support import kube as fixture

    work = Path(tempfile.mkdtemp(prefix="bench-kube-"))
    processes = []
    try:
        etcd, etcd_url = fixture._start_etcd(work)
        processes.append(etcd)
        apiserver, cluster = fixture._start_apiserver(work, etcd_url)
        processes.append(apiserver)
        fixture.apply_crds(cluster)
        processes.append(fixture._start_controller_manager(work, cluster))
        store = KubernetesStore.from_kubeconfig(str(cluster.kubeconfig), cluster.context)
        try:
            await store.create(NAMESPACE, {"metadata": {"name": "bench"}})
            before = store.requests
            seconds = await run_all(store, work, "bench", count, local=False)
            requests = store.requests - before
        finally:
            await store.close()
        print(
            f"kube-apiserver 1.20.2: {count} blank DVs Succeeded in {seconds:.2f} s "
            f"({count / seconds:.1f} DV/s); {requests} API requests, {requests / count:.1f} per DV"
        )
    finally:
        for process in reversed(processes):
            fixture._stop(process)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--kube", action="store_true", help="also run against a real apiserver")
    args = parser.parse_args()
    asyncio.run(embedded(args.count))
    if args.kube:
        asyncio.run(kube(args.count))


if __name__ == "__main__":
    main()
