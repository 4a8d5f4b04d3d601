"""``diskplane controllers``: the DataVolume and VirtualMachine controllers against a
cluster (the Helm chart's Deployment), one active replica at a time.

Replicas campaign for a ``coordination.k8s.io/v1`` Lease; only the holder
reconciles, and it stops reconciling as soon as it loses the lease.

Where imports run:

- ``--node-local`` (implied by ``--importer``): node-local imports
  (:mod:`controllers.node_local`): each DataVolume's claim gets a ``local`` PV
  in a registered node's volume pool and that node's importer service writes it.
  ``--importer URL --node-data-dir DIR [--agent URL] [--node-name N]`` registers
  this machine as such a node (a single-node setup) and keeps its heartbeat;
  other nodes register the same ``Node`` annotations themselves.
- otherwise imports land in the local volume pool of ``--data-dir`` (in-process
  ``LocalImporter``); the PVCs are created and owned as CDI does either way.

The VMI controller schedules onto the node agents registered in the cluster
(``Node`` records with ``diskplane.io/agent-url``), as ``diskplane up`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from controllers.api.kinds import (
    DATAVOLUME,
    PERSISTENTVOLUMECLAIM,
)
from controllers.node_local import LOCAL_STORAGE_CLASS, NodeLocalImporter
from controllers.nodes import (
    DATA_DIR_ANNOTATION,
    IMPORTER_URL_ANNOTATION,
    NodeDirectory,
    free_memory_bytes,
    register_node,
    run_heartbeats,
)
from controllers.reconcile import Controller, EventRecorder
from controllers.reconcilers.datavolume import DataVolumeReconciler
from controllers.reconcilers.importer import Importer
from controllers.reconcilers.local_importer import LocalImporter
from controllers.reconcilers.wiring import vm_controllers
from controllers.run_nodes import forward_node_events
from controllers.store.leader import LeaderElector, LeaseTiming
from controllers.store.protocol import Store


async def _lead(store: Store, importer: Importer, nodes: NodeDirectory) -> None:
    """Reconcile until cancelled (when the lease is lost or on stop)."""
    recorder = EventRecorder(store)
    dvs = Controller(
        "datavolumes",
        store,
        DATAVOLUME,
        DataVolumeReconciler(store, importer, recorder, bind_claims_locally=False),
        owns=(PERSISTENTVOLUMECLAIM,),  # a claim the PV binder binds starts its import
    )
    importer.set_listener(dvs.enqueue)
    vms, vmis = vm_controllers(store, nodes, recorder)
    async with asyncio.TaskGroup() as group:
        group.create_task(dvs.run(), name="controllers-datavolumes")
        group.create_task(vms.run(), name="controllers-virtualmachines")
        group.create_task(vmis.run(), name="controllers-virtualmachineinstances")
        group.create_task(forward_node_events(nodes, vmis.enqueue), name="controllers-agents")


async def _register_this_node(store: Store, args: argparse.Namespace) -> None:
    """``--importer``: this machine is a node; its record says where its services are."""
    free = await asyncio.to_thread(free_memory_bytes)
    await register_node(store, args.node_name, args.agent or "", free, _node_annotations(args))


def _node_annotations(args: argparse.Namespace) -> dict[str, str]:
    data_dir = Path(args.node_data_dir or args.data_dir).absolute()
    return {IMPORTER_URL_ANNOTATION: args.importer, DATA_DIR_ANNOTATION: str(data_dir)}


def _importer(args: argparse.Namespace, store: Store, nodes: NodeDirectory) -> Importer:
    if args.node_local or args.importer:
        return NodeLocalImporter(store, nodes, args.storage_class)
    return LocalImporter.for_data_dir(args.data_dir)


async def run(args: argparse.Namespace) -> int:
    from controllers.store.kubernetes import KubernetesStore  # the client loads only here

    store = (
        KubernetesStore.in_cluster()
        if args.in_cluster
        else KubernetesStore.from_kubeconfig(args.kubeconfig, args.context)
    )
    nodes = NodeDirectory(store)
    importer = _importer(args, store, nodes)
    beats: asyncio.Task[None] | None = None
    if args.importer:
        await _register_this_node(store, args)
        beats = asyncio.create_task(
            run_heartbeats(store, args.node_name, free_memory_bytes), name="controllers-heartbeat"
        )
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
            work = asyncio.create_task(_lead(store, importer, nodes), name="controllers-lead")
            await _first(lost.wait(), stop.wait(), work)
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
    finally:
        for task in (campaign, beats):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (campaign, beats) if t), return_exceptions=True)
        await importer.close()
        await nodes.close()
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
    p.add_argument(
        "--node-local",
        action="store_true",
        help="import into node-local PVs through the registered nodes' importer services",
    )
    p.add_argument(
        "--storage-class",
        default=LOCAL_STORAGE_CLASS,
        help=f"the node-local storage class (default {LOCAL_STORAGE_CLASS})",
    )
    p.add_argument("--importer", help="register this machine as a node: its importer service URL")
    p.add_argument("--agent", help="with --importer: this node's agent URL")
    p.add_argument(
        "--node-data-dir", type=Path, help="the importer's data dir (default --data-dir)"
    )
    p.add_argument("--node-name", default=socket.gethostname(), help="this node's name")

    def handler(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(run(args))
        except Exception as exc:
            print(f"error: diskplane controllers failed: {exc}", file=sys.stderr)
            return 1

    p.set_defaults(handler=handler)
