"""``diskplane up``: the embedded stack, state in one data dir, services on 127.0.0.1.

Once it holds the data dir's Lease (a second ``up`` on the same dir waits),
it starts

- the importer service (``cdi.service``, HTTP on ``--importer-listen``),
- the node agent (``virtnode``, HTTP on ``--agent-listen``), registered as a
  ``Node`` record with its URL and free memory and a heartbeat,
- the DataVolume controller over the importer service
  (:class:`~controllers.reconcilers.service_importer.ServiceImporter`), the
  VirtualMachine controller and the VMI controller, which schedules onto the
  registered agents and talks to them with ``virtnode.AgentClient``;

and writes the services' URLs to ``<data_dir>/up.json`` (:func:`read_endpoints`)
for ``diskplane image-upload``. The services listen on their usual ports
(importer 8444, agent 8186, so ``diskplane upload`` and ``diskplane console``
reach them without flags) or, when one is taken, on a free port of 127.0.0.1.
SIGINT/SIGTERM stop it; guests keep running and the next ``up`` re-adopts them; objects, import jobs
and finished volumes survive restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from cdi.service import ServiceSettings
from cdi.service import create_app as create_importer_app
from controllers.api.kinds import DATAVOLUME
from controllers.nodes import (
    NodeDirectory,
    forward_agent_events,
    free_memory_bytes,
    register_node,
    run_heartbeats,
)
from controllers.reconcile import Controller, EventRecorder
from controllers.reconcilers.datavolume import DataVolumeReconciler
from controllers.reconcilers.service_importer import ServiceImporter
from controllers.reconcilers.wiring import vm_controllers
from controllers.store.embedded import EmbeddedStore
from controllers.store.leader import LeaderElector
from controllers.store.protocol import Store
from virtnode import AgentSettings, NodeAgent
from virtnode.api import create_app as create_agent_app

LEASE_NAME = "diskplane-up"
LEASE_NAMESPACE = "diskplane-system"
ENDPOINTS_FILE = "up.json"
# The services' usual ports (`diskplane upload` and `diskplane console` default to them);
# when one is taken, `up` serves on a free port instead. up.json has the URLs either way.
DEFAULT_IMPORTER_LISTEN = "127.0.0.1:8444"
DEFAULT_AGENT_LISTEN = "127.0.0.1:8186"
# On stop, how long open requests (event streams, uploads) get before they are cut.
SHUTDOWN_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Endpoints:
    """Where a running ``diskplane up`` serves (``<data_dir>/up.json``)."""

    importer: str
    agent: str
    node: str
    pid: int


def read_endpoints(data_dir: Path) -> Endpoints | None:
    """The endpoints of the ``up`` running on ``data_dir``, None when none runs."""
    try:
        raw = json.loads((data_dir / ENDPOINTS_FILE).read_text())
        found = Endpoints(str(raw["importer"]), str(raw["agent"]), str(raw["node"]), raw["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(found.pid, 0)
    except ProcessLookupError:
        return None  # a stale file from an `up` that was killed
    except PermissionError:
        pass
    return found


def _write_endpoints(data_dir: Path, endpoints: Endpoints) -> None:
    tmp = data_dir / f".{ENDPOINTS_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(endpoints), indent=2) + "\n")
    tmp.replace(data_dir / ENDPOINTS_FILE)


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host or "127.0.0.1", int(port)


@contextlib.asynccontextmanager
async def serving(app: web.Application, listen: str, fallback: bool = False) -> AsyncIterator[str]:
    """Serve ``app`` on ``listen`` (HOST:PORT, port 0 = free); yields its URL.

    With ``fallback`` a port already in use is replaced by a free one.
    """
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        host, port = _host_port(listen)
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            if not fallback or exc.errno != errno.EADDRINUSE:
                raise
            print(f"diskplane up: {host}:{port} is in use; serving on a free port", flush=True)
            await web.TCPSite(runner, host, 0).start()
        bound = runner.addresses[0][1]
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()


async def _reconcile(
    store: Store, data_dir: Path, endpoints: Endpoints, stop: asyncio.Event
) -> None:
    """The three controllers and the node's heartbeat and events, until ``stop``."""
    importer = ServiceImporter(endpoints.importer, data_dir=data_dir)
    nodes = NodeDirectory(store)
    recorder = EventRecorder(store)
    dvs = Controller(
        "datavolumes", store, DATAVOLUME, DataVolumeReconciler(store, importer, recorder)
    )
    importer.set_listener(dvs.enqueue)
    vms, vmis = vm_controllers(store, nodes, recorder)
    try:
        async with asyncio.TaskGroup() as group:
            runners = [
                group.create_task(dvs.run(), name="up-datavolume-controller"),
                group.create_task(vms.run(), name="up-virtualmachine-controller"),
                group.create_task(vmis.run(), name="up-vmi-controller"),
                group.create_task(
                    forward_agent_events(endpoints.agent, vmis.enqueue), name="up-agent-events"
                ),
                group.create_task(
                    run_heartbeats(store, endpoints.node, free_memory_bytes),
                    name="up-node-heartbeat",
                ),
            ]
            print("diskplane up: controllers running; Ctrl-C stops", flush=True)
            await stop.wait()
            for runner in runners:
                runner.cancel()
    finally:
        await importer.close()
        await nodes.close()


async def _run_stack(args: argparse.Namespace, store: Store, stop: asyncio.Event) -> None:
    data_dir: Path = args.data_dir
    importer_app = create_importer_app(ServiceSettings(data_dir=data_dir))
    agent = NodeAgent(AgentSettings(data_dir=data_dir, node_name=args.node_name))
    async with (
        serving(
            importer_app,
            args.importer_listen or DEFAULT_IMPORTER_LISTEN,
            fallback=not args.importer_listen,
        ) as importer_url,
        serving(
            create_agent_app(agent),
            args.agent_listen or DEFAULT_AGENT_LISTEN,
            fallback=not args.agent_listen,
        ) as agent_url,
    ):
        endpoints = Endpoints(importer_url, agent_url, args.node_name, os.getpid())
        await register_node(store, endpoints.node, agent_url, free_memory_bytes())
        _write_endpoints(data_dir, endpoints)
        print(f"diskplane up: importer service {importer_url}", flush=True)
        print(f"diskplane up: node agent {agent_url} (node {endpoints.node})", flush=True)
        try:
            await _reconcile(store, data_dir, endpoints, stop)
        finally:
            with contextlib.suppress(FileNotFoundError):
                (data_dir / ENDPOINTS_FILE).unlink()


async def _serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    store = await EmbeddedStore.open(args.data_dir)
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
                await _run_stack(args, store, stop)
            waiting.cancel()
            stopping.cancel()
            campaign.cancel()
    finally:
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
        "up",
        help="run the embedded stack (store, controllers, importer service, node agent)",
    )
    parser.add_argument(
        "--importer-listen",
        help=f"importer service HOST:PORT (default {DEFAULT_IMPORTER_LISTEN}, else a free port)",
    )
    parser.add_argument(
        "--agent-listen",
        help=f"node agent HOST:PORT (default {DEFAULT_AGENT_LISTEN}, else a free port)",
    )
    parser.add_argument(
        "--node-name", default=socket.gethostname(), help="this node's name (default: hostname)"
    )

    def handler(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(up(args))
        except Exception as exc:
            print(f"error: diskplane up failed: {exc}", file=sys.stderr)
            return 1

    parser.set_defaults(handler=handler)
