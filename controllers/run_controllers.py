"""``diskplane controllers``: the DataVolume and VirtualMachine controllers against a
cluster (the Helm chart's Deployment), one active replica at a time.

Replicas campaign for a ``coordination.k8s.io/v1`` Lease; only the holder
reconciles, and it stops reconciling as soon as it loses the lease. Imports
land in the local volume pool of ``--data-dir`` until the cluster-side importer
adapter exists; the PVCs are created and owned as CDI does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from typing import Any

from controllers.api.kinds import DATAVOLUME, VIRTUALMACHINE, VIRTUALMACHINEINSTANCE
from controllers.reconcile import Controller, EventRecorder
from controllers.reconcilers.datavolume import DataVolumeReconciler
from controllers.reconcilers.local_importer import LocalImporter
from controllers.reconcilers.virtualmachine import VirtualMachineReconciler
from controllers.store.leader import LeaderElector, LeaseTiming
from controllers.store.protocol import Store


async def _lead(store: Store, importer: LocalImporter) -> None:
    """Reconcile until cancelled (when the lease is lost or on stop)."""
    recorder = EventRecorder(store)
    dvs = Controller(
        "datavolumes",
        store,
        DATAVOLUME,
        DataVolumeReconciler(store, importer, recorder, bind_claims_locally=False),
    )
    importer.set_listener(dvs.enqueue)
    vms = Controller(
        "virtualmachines",
        store,
        VIRTUALMACHINE,
        VirtualMachineReconciler(store, recorder),
        owns=(DATAVOLUME, VIRTUALMACHINEINSTANCE),
    )
    async with asyncio.TaskGroup() as group:
        group.create_task(dvs.run(), name="controllers-datavolumes")
        group.create_task(vms.run(), name="controllers-virtualmachines")


async def run(args: argparse.Namespace) -> int:
    from controllers.store.kubernetes import KubernetesStore  # the client loads only here

    store = (
        KubernetesStore.in_cluster()
        if args.in_cluster
        else KubernetesStore.from_kubeconfig(args.kubeconfig, args.context)
    )
    importer = LocalImporter.for_data_dir(args.data_dir)
    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    namespace = os.environ.get("POD_NAMESPACE") or args.lease_namespace
    elector = LeaderElector(store, args.lease, identity, namespace, LeaseTiming())
    stop, leading, lost = asyncio.Event(), asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    campaign = asyncio.create_task(elector.run(leading, lost), name="controllers-leader-election")
    try:
        while not stop.is_set():
            print(f"diskplane controllers: {identity} waiting for lease {args.lease}", flush=True)
            if not await _first(leading.wait(), stop.wait()):
                break
            print(f"diskplane controllers: {identity} leads; reconciling", flush=True)
            work = asyncio.create_task(_lead(store, importer), name="controllers-lead")
            await _first(lost.wait(), stop.wait(), work)
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
    finally:
        campaign.cancel()
        await asyncio.gather(campaign, return_exceptions=True)
        await importer.close()
        await store.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    print("diskplane controllers: stopped", flush=True)
    return 0


async def _first(*waits: Any) -> bool:
    """Wait for the first of ``waits``; True when it was the first one."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return tasks[0] in done


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("controllers", help="run the controllers against a cluster")
    p.add_argument("--kubeconfig")
    p.add_argument("--context")
    p.add_argument("--in-cluster", action="store_true", help="use the pod's service account")
    p.add_argument("--lease", default="diskplane-controllers", help="Lease name")
    p.add_argument("--lease-namespace", default="default")

    def handler(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(run(args))
        except Exception as exc:
            print(f"error: diskplane controllers failed: {exc}", file=sys.stderr)
            return 1

    p.set_defaults(handler=handler)
