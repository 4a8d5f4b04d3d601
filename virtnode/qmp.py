"""One QMP session to one QEMU: an explicit state machine over ``qemu.qmp.QMPClient``.

::

    IDLE ──connect()──▶ CONNECTING ──ok──▶ READY ──QEMU hangs up──▶ DISCONNECTED
      ▲                     │                │                          │
      └──────failed─────────┘            close()                    close()
                                             ▼                          ▼
                                          CLOSING ───────────────▶ CLOSED

Commands run only in ``READY``; anything else raises
:class:`~virtnode.errors.QmpSessionStateError` naming the state. Every call
has a timeout. Events arrive in a bounded queue in the order QEMU sent them,
followed by one ``None`` when the monitor goes away. This module is the only
place that sees ``qemu.qmp`` exceptions.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, EventListener, ExecInterruptedError, QMPClient, QMPError
from qemu.qmp import ExecuteError as _ExecuteError
from qemu.qmp import Runstate as _Runstate
from qemu.qmp.message import Message

from virtnode.errors import (
    QmpCommandError,
    QmpConnectError,
    QmpDisconnectedError,
    QmpError,
    QmpSessionStateError,
    QmpTimeoutError,
)
from virtnode.settings import QmpTimeouts

log = logging.getLogger(__name__)

# Pause between connection attempts while QEMU creates its socket.
CONNECT_RETRY_INTERVAL = 0.05

LatencyObserver = Callable[[str, float], None]


class QmpState(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    READY = "ready"
    DISCONNECTED = "disconnected"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True)
class QmpEvent:
    name: str
    data: Mapping[str, Any]
    #: QEMU's own timestamp (seconds since the epoch).
    timestamp: float


class _Forwarder(EventListener):
    """Hands each event to the session synchronously, in arrival order, keeping no history."""

    def __init__(self, sink: Callable[[Message], None]) -> None:
        super().__init__()
        self._sink = sink

    async def put(self, event: Message) -> None:
        self._sink(event)


class QmpSession:
    """The monitor connection of one VM."""

    def __init__(
        self,
        socket_path: Path,
        *,
        vm: str,
        timeouts: QmpTimeouts,
        event_queue_size: int = 256,
        observe_latency: LatencyObserver | None = None,
    ) -> None:
        self._socket = socket_path
        self._vm = vm
        self._timeouts = timeouts
        self._observe = observe_latency
        self._state = QmpState.IDLE
        self._client: QMPClient | None = None
        self._events: asyncio.Queue[QmpEvent | None] = asyncio.Queue(event_queue_size)
        self._watcher: asyncio.Task[None] | None = None
        self.dropped_events = 0
        self.disconnected = asyncio.Event()

    @property
    def state(self) -> QmpState:
        return self._state

    def _require(self, action: str, *allowed: QmpState) -> None:
        if self._state not in allowed:
            raise QmpSessionStateError(
                f"cannot {action} on the QMP session of VM {self._vm}: it is {self._state.value}"
            )

    async def connect(self, limit: float | None = None) -> None:
        """Connect and negotiate, retrying until QEMU's socket answers or ``timeout``."""
        self._require("connect", QmpState.IDLE)
        self._state = QmpState.CONNECTING
        deadline = time.monotonic() + (limit or self._timeouts.connect)
        try:
            self._client = await self._connect_until(deadline)
        except BaseException:
            self._state = QmpState.IDLE
            raise
        self._state = QmpState.READY
        self._watcher = asyncio.create_task(self._watch(), name=f"qmp-watch:{self._vm}")

    async def _connect_until(self, deadline: float) -> QMPClient:
        while True:
            # A client whose connect failed is not reusable (qemu.qmp); make a new one.
            client = QMPClient(self._vm)
            # Replace the default listener (unbounded queue and history) with ours.
            default, forwarder = client.events, _Forwarder(self._on_event)
            client.register_listener(forwarder)
            client.events = forwarder
            client.remove_listener(default)
            try:
                remaining = max(deadline - time.monotonic(), 0.01)
                await asyncio.wait_for(client.connect(str(self._socket)), remaining)
                return client
            except (ConnectError, TimeoutError, OSError) as exc:
                if time.monotonic() + CONNECT_RETRY_INTERVAL >= deadline:
                    raise QmpConnectError(
                        f"QMP socket {self._socket} of VM {self._vm} did not answer: {exc}"
                    ) from exc
            await asyncio.sleep(CONNECT_RETRY_INTERVAL)

    def _on_event(self, msg: Message) -> None:
        raw_stamp = msg.get("timestamp")
        stamp: Mapping[str, Any] = raw_stamp if isinstance(raw_stamp, Mapping) else {}
        raw_data = msg.get("data")
        event = QmpEvent(
            name=str(msg["event"]),
            data=dict(raw_data) if isinstance(raw_data, Mapping) else {},
            timestamp=float(stamp.get("seconds", 0)) + float(stamp.get("microseconds", 0)) / 1e6,
        )
        self._offer(event)

    def _offer(self, event: QmpEvent | None) -> None:
        while True:
            try:
                self._events.put_nowait(event)
                return
            except asyncio.QueueFull:
                self._events.get_nowait()  # drop the oldest; the consumer is too slow
                self.dropped_events += 1

    async def _watch(self) -> None:
        assert self._client is not None
        client = self._client
        while client.runstate is _Runstate.RUNNING:
            await client.runstate_changed()
        if self._state is QmpState.READY:
            self._state = QmpState.DISCONNECTED
        self.disconnected.set()
        self._offer(None)

    async def events(self) -> AsyncIterator[QmpEvent]:
        """Events in arrival order; ends when QEMU closes the monitor."""
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    async def execute(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        limit: float | None = None,
    ) -> Any:
        """Run one QMP command and return its ``return`` value."""
        self._require(f"run {command!r}", QmpState.READY)
        assert self._client is not None
        limit = limit or self._timeouts.command
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(
                self._client.execute(command, dict(arguments) if arguments else None), limit
            )
        except TimeoutError as exc:
            raise QmpTimeoutError(
                f"QMP command {command!r} on VM {self._vm} did not answer within {limit:g} s"
            ) from exc
        except (QMPError, EOFError, OSError) as exc:
            raise self._translate(command, exc) from exc
        if self._observe is not None:
            self._observe(command, time.monotonic() - started)
        return result

    def _translate(self, command: str, exc: BaseException) -> QmpError:
        if isinstance(exc, _ExecuteError):
            return QmpCommandError(
                f"QEMU refused {command!r} on VM {self._vm}: {exc.error.error.desc}",
                exc.error_class,
            )
        if isinstance(exc, ExecInterruptedError | EOFError | OSError):
            return QmpDisconnectedError(
                f"QEMU of VM {self._vm} closed its monitor during {command!r}"
            )
        return QmpError(f"QMP command {command!r} on VM {self._vm} failed: {exc}")

    async def close(self) -> None:
        """Disconnect (idempotent); QEMU keeps running."""
        if self._state in (QmpState.CLOSED, QmpState.CLOSING):
            return
        self._state = QmpState.CLOSING
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._client is not None:
            try:
                # A hung QEMU must not hang the agent's shutdown or a VM's cleanup.
                async with asyncio.timeout(self._timeouts.command):
                    await self._client.disconnect()
            except (QMPError, EOFError, OSError, TimeoutError) as exc:
                # After QEMU quits the reader ends with EOF; that is the expected end.
                log.debug("QMP disconnect of VM %s ended with %r", self._vm, exc)
        self._state = QmpState.CLOSED
        self.disconnected.set()
