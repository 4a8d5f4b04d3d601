"""QmpSession against a real QEMU (no guest: ``-S`` and no disks, so nothing boots)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from virtnode import (
    QmpCommandError,
    QmpConnectError,
    QmpSession,
    QmpSessionStateError,
    QmpState,
    QmpTimeoutError,
    QmpTimeouts,
)

FAST = QmpTimeouts(connect=5.0, command=2.0, block=2.0)


@pytest.fixture
async def qemu() -> AsyncIterator[tuple[subprocess.Popen[bytes], Path]]:
    sock = Path(tempfile.mkdtemp(prefix="dpqmp-")) / "qmp.sock"
    argv = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-S", "-nodefaults"]
    argv += ["-display", "none", "-qmp", f"unix:{sock},server=on,wait=off"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc, sock
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        await asyncio.to_thread(proc.wait, 10)
        sock.unlink(missing_ok=True)
        sock.parent.rmdir()


async def test_state_machine_commands_errors_and_events(
    qemu: tuple[subprocess.Popen[bytes], Path],
) -> None:
    proc, sock = qemu
    session = QmpSession(sock, vm="t/qmp", timeouts=FAST)
    with pytest.raises(QmpSessionStateError, match="it is idle"):
        await session.execute("query-status")
    await session.connect()
    assert session.state is QmpState.READY
    with pytest.raises(QmpSessionStateError, match=r"cannot connect .* it is ready"):
        await session.connect()
    assert (await session.execute("query-status"))["status"] == "prelaunch"
    with pytest.raises(QmpCommandError, match="QEMU refused 'no-such-command'") as info:
        await session.execute("no-such-command")
    assert info.value.error_class == "CommandNotFound"

    # A QEMU that stops answering makes the call time out, by name.
    os.kill(proc.pid, signal.SIGSTOP)
    with pytest.raises(QmpTimeoutError, match=r"'query-status' .* within 0\.2 s"):
        await session.execute("query-status", limit=0.2)
    os.kill(proc.pid, signal.SIGCONT)

    # quit: SHUTDOWN arrives in order, the stream ends, the session is disconnected.
    await session.execute("quit")
    names = [event.name async for event in session.events()]
    assert names[-1] == "SHUTDOWN"
    await asyncio.wait_for(session.disconnected.wait(), 5)
    assert session.state is QmpState.DISCONNECTED
    with pytest.raises(QmpSessionStateError, match="disconnected"):
        await session.execute("query-status")
    await session.close()
    assert session.state is QmpState.CLOSED


async def test_connect_gives_up_with_a_named_error(tmp_path: Path) -> None:
    session = QmpSession(tmp_path / "absent.sock", vm="t/none", timeouts=FAST)
    with pytest.raises(QmpConnectError, match=r"absent\.sock of VM t/none did not answer"):
        await session.connect(limit=0.3)
    assert session.state is QmpState.IDLE


async def test_cancellation_is_not_swallowed(qemu: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, sock = qemu
    session = QmpSession(sock, vm="t/cancel", timeouts=FAST)
    await session.connect()
    os.kill(proc.pid, signal.SIGSTOP)
    task = asyncio.create_task(session.execute("query-status", limit=5))
    await asyncio.sleep(0.05)  # let the command go out; nothing observable to await
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    os.kill(proc.pid, signal.SIGCONT)
    assert (await session.execute("query-status"))["status"] == "prelaunch"
    await session.close()


async def test_close_is_bounded_when_qemu_hangs(qemu: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, sock = qemu
    session = QmpSession(sock, vm="t/hung", timeouts=FAST)
    await session.connect()
    os.kill(proc.pid, signal.SIGSTOP)
    async with asyncio.timeout(FAST.command + 2):
        await session.close()
    assert session.state is QmpState.CLOSED
