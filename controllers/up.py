"""``diskplane up``: the embedded stack in one process, state in the data dir.

It runs the embedded store, the DataVolume controller with the in-process
importer (volumes under ``<data_dir>/volumes``), the VirtualMachine
controller (DataVolumes and VMIs per runStrategy) and the VMI controller on
the in-process node agent (guests keep running when ``up`` stops; the next
``up`` re-adopts them). The importer *service* joins here later. A
Lease in the store makes a second ``up`` on the same data dir wait instead of
reconciling twice. SIGINT/SIGTERM stop it cleanly; restarting keeps every
object (SQLite) and every finished volume.
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
from controllers.reconcilers.vmi import VirtualMachineInstanceReconciler, forward_agent_events
from controllers.store.embedded import EmbeddedStore
from controllers.store.leader import LeaderElector
from virtnode import AgentSettings, NodeAgent

LEASE_NAME = "diskplane-up"
LEASE_NAMESPACE = "diskplane-system"


async def _serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    store = await EmbeddedStore.open(args.data_dir)
    importer = LocalImporter.for_data_dir(args.data_dir)
    recorder = EventRecorder(store)
    controller = Controller(
        "datavolumes", store, DATAVOLUME, DataVolumeReconciler(store, importer, recorder)
    )
    importer.set_listener(controller.enqueue)
    vms = Controller(
        "virtualmachines",
        store,
        VIRTUALMACHINE,
        VirtualMachineReconciler(store, recorder),
        owns=(DATAVOLUME, VIRTUALMACHINEINSTANCE),
    )
    agent = NodeAgent(AgentSettings(data_dir=args.data_dir))
    identity = f"{socket.gethostname()}-{os.getpid()}"
    elector = LeaderElector(store, LEASE_NAME, identity, LEASE_NAMESPACE)
    leading = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as group:
            campaign = group.create_task(elector.run(leading), name="up-leader-election")
            print(f"diskplane up: data dir {args.data_dir}, waiting for the lease", flush=True)
            waiting = group.create_task(leading.wait(), name="up-wait-lease")
            stopping = group.create_task(stop.wait(), name="up-wait-stop")
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not stop.is_set():
                await agent.start()  # re-adopts guests a previous `up` left running
                vmis = Controller(
                    "virtualmachineinstances",
                    store,
                    VIRTUALMACHINEINSTANCE,
                    VirtualMachineInstanceReconciler(store, agent, recorder),
                )
                print("diskplane up: controllers running; Ctrl-C stops", flush=True)
                runners = [
                    group.create_task(controller.run(), name="up-datavolume-controller"),
                    group.create_task(vms.run(), name="up-virtualmachine-controller"),
                    group.create_task(vmis.run(), name="up-vmi-controller"),
                    group.create_task(
                        forward_agent_events(agent, vmis.enqueue), name="up-agent-events"
                    ),
                ]
                await stopping
                for runner in runners:
                    runner.cancel()
            waiting.cancel()
            campaign.cancel()
    finally:
        await agent.close()  # guests keep running; the next `up` re-adopts them
        await importer.close()
        await store.close()
    print("diskplane up: stopped", flush=True)


async def up(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await _serve(args, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "up", help="run the embedded stack (store, controllers, importer) in the data dir"
    )

    def handler(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(up(args))
        except Exception as exc:
            print(f"error: diskplane up failed: {exc}", file=sys.stderr)
            return 1

    parser.set_defaults(handler=handler)
