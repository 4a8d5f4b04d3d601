"""Node agents registered in the store, their heartbeats, and VMI scheduling by free memory.

Each node agent is a core/v1 ``Node``-shaped record (cluster-scoped): the
agent's URL in the ``diskplane.io/agent-url`` annotation, the memory it has
free in ``status.allocatable.memory`` (bytes) and a ``Ready`` condition whose
``lastHeartbeatTime`` the agent's owner (``diskplane up``) renews every
:data:`HEARTBEAT_S`. A node whose heartbeat is older than :data:`NODE_STALE_S`
is not schedulable.

Scheduling picks, among fresh nodes, the one with the most memory left after
subtracting what VMIs already placed there but not yet running ask for (a
running guest is already inside the reported free memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdi.service import RequestInvalid, parse_quantity
from controllers.api.common import now_rfc3339
from controllers.api.kinds import VIRTUALMACHINEINSTANCE, ResourceKind
from controllers.errors import AlreadyExists, ControllersError, NotFound
from controllers.reconcilers.importer import Key
from controllers.store.protocol import Object, Store
from virtnode import AgentClient, AgentUnavailableError

log = logging.getLogger(__name__)

NODE = ResourceKind("", "v1", "Node", "nodes", "node", ("no",), False)
AGENT_URL_ANNOTATION = "diskplane.io/agent-url"
# A node's importer service and the data dir its volume pool lives in (node-local imports).
IMPORTER_URL_ANNOTATION = "diskplane.io/importer-url"
DATA_DIR_ANNOTATION = "diskplane.io/data-dir"
# How often a registered agent's record is renewed, and when it counts as gone.
HEARTBEAT_S = 10.0
NODE_STALE_S = 40.0
# Reconnect delay of an agent event stream that broke.
EVENTS_RECONNECT_S = 1.0
# Memory a VMI asks for when its spec names none (KubeVirt's minimum guest size).
DEFAULT_VMI_MEMORY = 8 * 1024 * 1024
_NOT_RUNNING = ("", "Pending", "Scheduling", "Scheduled")


@dataclass(frozen=True)
class NodeInfo:
    name: str
    url: str
    free_memory: int
    heartbeat: datetime.datetime | None
    importer_url: str = ""
    data_dir: str = ""


def free_memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """``MemAvailable`` of this machine, in bytes."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"{meminfo} has no MemAvailable line")


def vmi_memory(vmi: Mapping[str, Any]) -> int:
    """The guest memory a VMI asks for (``memory.guest``, else ``resources.requests.memory``)."""
    domain = (vmi.get("spec") or {}).get("domain") or {}
    text = (domain.get("memory") or {}).get("guest") or (
        ((domain.get("resources") or {}).get("requests") or {}).get("memory")
    )
    if not text:
        return DEFAULT_VMI_MEMORY
    try:
        return parse_quantity(str(text), "memory")
    except RequestInvalid:
        return DEFAULT_VMI_MEMORY


def _node_info(obj: Object) -> NodeInfo:
    md, status = obj["metadata"], obj.get("status") or {}
    ready: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
    )
    beat = ready.get("lastHeartbeatTime")
    when = datetime.datetime.fromisoformat(beat.replace("Z", "+00:00")) if beat else None
    memory = str((status.get("allocatable") or {}).get("memory") or "0")
    annotations = md.get("annotations") or {}
    return NodeInfo(
        name=md["name"],
        url=annotations.get(AGENT_URL_ANNOTATION, ""),
        free_memory=int(memory) if memory.isdigit() else parse_quantity(memory, "memory"),
        heartbeat=when,
        importer_url=annotations.get(IMPORTER_URL_ANNOTATION, ""),
        data_dir=annotations.get(DATA_DIR_ANNOTATION, ""),
    )


async def register_node(
    store: Store,
    name: str,
    url: str,
    free_memory: int,
    extra: Mapping[str, str] | None = None,
) -> None:
    """Create or refresh the record of the agent ``name`` serving at ``url``.

    ``extra``: more annotations (the node's importer URL and data dir).
    """
    annotations = {AGENT_URL_ANNOTATION: url, **(extra or {})}
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": annotations},
    }
    try:
        await store.create(NODE, body)
    except AlreadyExists:
        current = await store.get(NODE, "", name)
        current["metadata"].setdefault("annotations", {}).update(annotations)
        await store.update(NODE, current)
    await heartbeat(store, name, free_memory)


async def heartbeat(store: Store, name: str, free_memory: int) -> None:
    now = now_rfc3339()
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "AgentReady",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }
    status = {"allocatable": {"memory": str(free_memory)}, "conditions": [ready]}
    await store.patch_status(NODE, "", name, status)


async def run_heartbeats(
    store: Store, name: str, free: Callable[[], int], interval_s: float = HEARTBEAT_S
) -> None:
    """Until cancelled: renew node ``name``'s record with its free memory."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await heartbeat(store, name, await asyncio.to_thread(free))
        except Exception as exc:  # the store is briefly unavailable: next beat retries
            log.warning("heartbeat of node %s failed: %s", name, exc)


class NodeDirectory:
    """The registered agents: who is fresh, who has room, and one client per agent."""

    def __init__(self, store: Store, stale_after_s: float = NODE_STALE_S) -> None:
        self.store, self.stale_after_s = store, stale_after_s
        self._clients: dict[str, AgentClient] = {}

    async def nodes(self) -> list[NodeInfo]:
        listing = await self.store.list(NODE, None)
        return [_node_info(item) for item in listing.items]

    async def get(self, name: str) -> NodeInfo | None:
        try:
            return _node_info(await self.store.get(NODE, "", name))
        except NotFound:
            return None

    def _fresh(self, node: NodeInfo, *, agent: bool = True) -> bool:
        if node.heartbeat is None or (agent and not node.url):
            return False
        age = datetime.datetime.now(datetime.UTC) - node.heartbeat
        return age.total_seconds() <= self.stale_after_s

    async def importer_nodes(self) -> list[NodeInfo]:
        """Fresh nodes serving an importer service, most free memory first."""
        nodes = [n for n in await self.nodes() if n.importer_url and self._fresh(n, agent=False)]
        return sorted(nodes, key=lambda n: (-n.free_memory, n.name))

    async def schedule(self, vmi: Object) -> NodeInfo | None:
        """The fresh node with the most memory left that fits ``vmi``; None when none fits."""
        wanted = vmi_memory(vmi)
        pending: dict[str, int] = {}
        for other in (await self.store.list(VIRTUALMACHINEINSTANCE, None)).items:
            status = other.get("status") or {}
            placed = status.get("nodeName")
            waiting = status.get("phase", "") in _NOT_RUNNING
            if placed and waiting and other["metadata"]["uid"] != vmi["metadata"]["uid"]:
                pending[placed] = pending.get(placed, 0) + vmi_memory(other)
        room = [
            (node.free_memory - pending.get(node.name, 0), node.name, node)
            for node in await self.nodes()
            if self._fresh(node)
        ]
        fits = [entry for entry in room if entry[0] >= wanted]
        return max(fits, key=lambda entry: (entry[0], entry[1]))[2] if fits else None

    async def client(self, node: NodeInfo) -> AgentClient:
        client = self._clients.get(node.url)
        if client is None:
            client = AgentClient(node.url)
            await client.__aenter__()
            self._clients[node.url] = client
        return client

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.__aexit__(None, None, None)


async def forward_agent_events(url: str, enqueue: Callable[[Key], None]) -> None:
    """Until cancelled: every event of the agent at ``url`` about a VMI queues that VMI.

    A broken stream reconnects; each (re)connection also queues nothing by
    itself, the controllers' resyncs cover events missed while disconnected.
    """
    while True:
        with contextlib.suppress(AgentUnavailableError):
            async with AgentClient(url) as client:
                async for event in client.events():
                    target = str(event.get("vmi", ""))
                    if "/" in target:
                        namespace, name = target.split("/", 1)
                        enqueue((namespace, name))
        await asyncio.sleep(EVENTS_RECONNECT_S)


async def agent_url_for(store: Store, namespace: str, name: str) -> str:
    """The URL of the node agent running VMI ``namespace/name`` (for its console).

    Raises :class:`~controllers.errors.NotFound` when the VMI does not exist and
    :class:`VmiNotPlaced` when it has no node (yet) or its node is not registered.
    """
    vmi = await store.get(VIRTUALMACHINEINSTANCE, namespace, name)
    node_name = (vmi.get("status") or {}).get("nodeName")
    if not node_name:
        raise VmiNotPlaced(f"VMI {namespace}/{name} is not scheduled onto a node yet")
    node = await NodeDirectory(store).get(node_name)
    if node is None or not node.url:
        raise VmiNotPlaced(
            f"VMI {namespace}/{name} runs on node {node_name}, which is not registered"
        )
    return node.url


class VmiNotPlaced(ControllersError):
    """A VMI has no node agent to talk to (not scheduled yet, or its node is gone)."""
