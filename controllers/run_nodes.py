"""Follow the event streams of every node agent registered in the store (cluster mode).

``diskplane up`` knows its one agent; ``diskplane controllers`` finds the agents
in the ``Node`` records (:mod:`controllers.nodes`) and re-reads them every
:data:`NODE_SCAN_S`, so an agent that registers later is followed too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from controllers.nodes import NodeDirectory, forward_agent_events
from controllers.reconcilers.importer import Key

log = logging.getLogger(__name__)

# How often the registered agents are re-read.
NODE_SCAN_S = 10.0


async def forward_node_events(
    nodes: NodeDirectory, enqueue: Callable[[Key], None], scan_s: float = NODE_SCAN_S
) -> None:
    """Until cancelled: one named follower task per registered agent URL."""
    followers: dict[str, asyncio.Task[None]] = {}
    try:
        while True:
            try:
                urls = {node.url for node in await nodes.nodes() if node.url}
            except Exception as exc:  # the store is briefly unavailable: the next scan retries
                log.warning("listing node agents failed: %s", exc)
                urls = set(followers)
            for url in urls - set(followers):
                followers[url] = asyncio.create_task(
                    forward_agent_events(url, enqueue), name=f"agent-events-{url}"
                )
            for url in set(followers) - urls:
                followers.pop(url).cancel()
            await asyncio.sleep(scan_s)
    finally:
        for task in followers.values():
            task.cancel()
        await asyncio.gather(*followers.values(), return_exceptions=True)
