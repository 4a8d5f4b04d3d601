"""``diskplane node serve`` (the node agent) and ``diskplane node console VM --agent URL``.

The user-facing ``diskplane console VM`` lives in the controllers, which know
which agent runs the VM; both end in :func:`attach_console`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from virtnode.agent import NodeAgent
from virtnode.api import create_app
from virtnode.settings import AgentSettings

DEFAULT_LISTEN = "127.0.0.1:8186"  # virt-handler's console port
AGENT_URL_ENV = "DISKPLANE_AGENT_URL"
#: Console detach key (Ctrl-]), as in virtctl and telnet.
DETACH = b"\x1d"


def register(subparsers: Any) -> None:
    node = subparsers.add_parser("node", help="run the node agent (VMs over QEMU/QMP)")
    node_sub = node.add_subparsers(dest="node_command", metavar="ACTION")
    serve = node_sub.add_parser("serve", help="serve the node agent API until interrupted")
    serve.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        help="HOST:PORT or unix:PATH (default %(default)s)",
    )
    serve.add_argument("--node-name", default=os.uname().nodename)
    serve.add_argument("--volume-dir", help="volume pool (default: <data-dir>/volumes)")
    serve.add_argument(
        "--driver",
        choices=("qemu", "libvirt"),
        default="qemu",
        help="run QEMU directly (default) or as transient libvirt domains",
    )
    serve.set_defaults(handler=_serve)

    console = node_sub.add_parser("console", help="attach to a VM's serial console on one agent")
    console.add_argument("vm", help="VMI name")
    console.add_argument("-n", "--namespace", default="default")
    console.add_argument(
        "--agent",
        default=default_agent_url(),
        help="node agent URL (default: $DISKPLANE_AGENT_URL or %(default)s)",
    )
    console.set_defaults(handler=_console)


def default_agent_url() -> str:
    """The agent to talk to when nothing else says: $DISKPLANE_AGENT_URL or the local one."""
    return os.environ.get(AGENT_URL_ENV, f"http://{DEFAULT_LISTEN}")


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = AgentSettings(
        data_dir=args.data_dir,
        volume_dir=Path(args.volume_dir).resolve() if args.volume_dir else None,
        node_name=args.node_name,
        driver=args.driver,
    )
    asyncio.run(_serve_async(settings, args.listen))
    return 0


async def _serve_async(settings: AgentSettings, listen: str) -> None:
    app = create_app(NodeAgent(settings))
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    if listen.startswith("unix:"):
        site: web.BaseSite = web.UnixSite(runner, listen.removeprefix("unix:"))
    else:
        host, _, port = listen.rpartition(":")
        site = web.TCPSite(runner, host or "127.0.0.1", int(port))
    await site.start()
    print(f"diskplane node agent listening on {listen}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        # Running VMs keep running; a restarted agent re-adopts them.
        await runner.cleanup()


def _console(args: argparse.Namespace) -> int:
    return attach_console(args.agent, args.namespace, args.vm)


def attach_console(agent_url: str, namespace: str, name: str) -> int:
    """Bridge this terminal to VMI ``namespace/name``'s serial console until Ctrl-] or EOF."""
    url = f"{agent_url.rstrip('/')}/v1/namespaces/{namespace}/vmis/{name}/console"
    try:
        return asyncio.run(_console_async(url))
    except aiohttp.ClientError as exc:
        print(f"console of {namespace}/{name}: {exc}", file=sys.stderr)
        return 1


async def _console_async(url: str) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    if sys.stdin.isatty():
        print("connected; Ctrl-] detaches", file=sys.stderr)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url) as ws,
        asyncio.TaskGroup() as tg,
    ):
        pump = tg.create_task(_stdin_to_ws(reader, ws), name="console-stdin")
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                sys.stdout.buffer.write(msg.data)
                sys.stdout.buffer.flush()
        pump.cancel()
    return 0


async def _stdin_to_ws(reader: asyncio.StreamReader, ws: aiohttp.ClientWebSocketResponse) -> None:
    while data := await reader.read(1024):
        if DETACH in data:
            break
        await ws.send_bytes(data)
    with contextlib.suppress(ConnectionResetError):
        await ws.close()
