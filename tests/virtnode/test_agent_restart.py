"""``diskplane node serve`` as a real process: API, console websocket, events, live updates.

Two guests run under an agent that is killed with SIGKILL and restarted: both are
re-adopted (same QEMU pid, consoles and actions work). Killing one QEMU is seen at once
(``Failed`` on the event stream); a QEMU that dies while the agent is down is reported
on the next start, and a stale run dir is cleaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from qemu.qmp import EventListener, QMPClient

from tests.virtnode.agentproc import AgentProcess, api, console_until, sse_events
from tests.virtnode.conftest import make_volume, vmi_object
from virtnode import AccelInfo, AgentSettings
from virtnode.rundir import RunDir
from virtnode.tinyguest import TinyGuest

pytestmark = pytest.mark.guest

MiB = 2**20


def vm_url(agent: AgentProcess, name: str) -> str:
    return f"{agent.url}/v1/namespaces/default/vmis/{name}"


async def test_agent_killed_and_restarted_readopts_guests(
    data_dir: Path, accel_info: AccelInfo, tiny_guest: TinyGuest
) -> None:
    settings = AgentSettings(data_dir=data_dir)
    pids: list[int] = []
    agent = AgentProcess(data_dir, accel_info.accel)
    await agent.start()
    try:
        async with aiohttp.ClientSession() as session:
            await _run_scenario(agent, session, settings, tiny_guest, pids)
    finally:
        await agent.stop()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _run_scenario(
    agent: AgentProcess,
    session: aiohttp.ClientSession,
    settings: AgentSettings,
    guest: TinyGuest,
    pids: list[int],
) -> None:
    health = await api(session, "GET", agent.url + "/healthz")
    assert health["accelerator"]["name"] == agent.accel
    assert health["qemuUser"]["uid"] == (107 if os.geteuid() == 0 else None)
    await api(session, "GET", vm_url(agent, "nope"), expect=404)
    bad = vmi_object("bad", guest, volumes=[{"name": "x", "hostDisk": {}}])
    refused = (await api(session, "POST", agent.url + "/v1/vmis", bad, 422))["message"]
    assert "hostDisk" in refused
    assert refused.startswith("VMI default/bad: ")  # every error names its VMI

    for name in ("vm-a", "vm-b", "vm-c"):
        make_volume(settings, f"pvc-{name}", 8 * MiB)
        obj = vmi_object(
            name,
            guest,
            volumes=[{"name": "root", "persistentVolumeClaim": {"claimName": f"pvc-{name}"}}],
        )
        created = await api(session, "POST", agent.url + "/v1/vmis", obj, 201)
        assert created["status"]["phase"] == "Running"
        pids.append(created["status"]["qemu"]["pid"])
    for name in ("vm-a", "vm-b", "vm-c"):
        await console_until(session, vm_url(agent, name) + "/console", r"tick 2 disks=vda")

    # SIGKILL the agent: the guests keep running.
    await agent.kill9()
    for pid in pids:
        os.kill(pid, 0)
    await agent.start()
    listed = await api(session, "GET", agent.url + "/v1/vmis")
    assert {i["metadata"]["name"]: i["status"]["qemu"]["pid"] for i in listed["items"]} == {
        "vm-a": pids[0],
        "vm-b": pids[1],
        "vm-c": pids[2],
    }
    assert all(i["status"]["phase"] == "Running" for i in listed["items"])
    for name in ("vm-a", "vm-b"):
        # The console works again: a tick newer than any before the restart shows up.
        match = await console_until(session, vm_url(agent, name) + "/console", r"tick (\d+) ")
        last = int(match.group(1))
        await console_until(
            session, vm_url(agent, name) + "/console", rf"tick {last + 2} disks=vda"
        )
    wrong = {"name": "x", "volumeSource": {"emptyDisk": {}}}
    refused = await api(session, "PUT", vm_url(agent, "vm-a") + "/addvolume", wrong, 422)
    assert refused["message"].startswith("VMI default/vm-a: addvolume needs")
    paused = await api(session, "PUT", vm_url(agent, "vm-a") + "/pause")
    assert paused["vmi"]["status"]["printableStatus"] == "Paused"
    await api(session, "PUT", vm_url(agent, "vm-a") + "/unpause")
    # Hard reset: the guest boots again (the backlog already holds the first boot).
    await api(session, "PUT", vm_url(agent, "vm-a") + "/reset")
    await console_until(
        session, vm_url(agent, "vm-a") + "/console", r"BOOTED[\s\S]*BOOTED[\s\S]*tick 2 "
    )

    # `diskplane console` streams the same console and detaches on Ctrl-].
    await _cli_console(agent, "vm-b")

    # A crash (QEMU killed) is Failed on the event stream within about a second.
    events = sse_events(session, agent.url + "/v1/events")
    assert (await anext(events))["type"] == "subscribed"
    os.kill(pids[1], signal.SIGKILL)
    killed_at = time.monotonic()
    async with asyncio.timeout(10):
        async for event in events:
            if event.get("vmi") == "default/vm-b" and event.get("phase") == "Failed":
                break
    assert time.monotonic() - killed_at < 1.0  # pidfd + at most EVENT_DRAIN_TIMEOUT
    await events.aclose()
    failed = await api(session, "GET", vm_url(agent, "vm-b"))
    assert failed["status"]["reason"] == "QemuExited"

    # While the agent is down: vm-c's QEMU dies, vm-a's guest powers off (QEMU kept by
    # -no-shutdown), a stale run dir appears. The next agent reports all of it.
    await agent.kill9()
    os.kill(pids[2], signal.SIGKILL)
    await _powerdown_directly(RunDir.for_vm(settings.run_dir, "default", "vm-a"))
    stale = settings.run_dir / "vm-0000000000000000"
    stale.mkdir()
    await agent.start()
    off = await api(session, "GET", vm_url(agent, "vm-a"))
    assert (off["status"]["phase"], off["status"]["reason"]) == ("Succeeded", "GuestShutdown")
    gone = await api(session, "GET", vm_url(agent, "vm-c"))
    assert gone["status"]["phase"] == "Failed"
    assert gone["status"]["reason"] == "QemuExitedWhileAgentDown"
    assert not stale.exists()
    assert list(settings.run_dir.iterdir()) == []
    # vm-b failed under the previous agent: its record in finished/ keeps it listed.
    crashed = await api(session, "GET", vm_url(agent, "vm-b"))
    assert (crashed["status"]["phase"], crashed["status"]["reason"]) == ("Failed", "QemuExited")
    metrics = await (await session.get(agent.url + "/metrics")).text()
    assert 'diskplane_vmis{phase="Failed"} 2' in metrics
    assert 'diskplane_vmis{phase="Succeeded"} 1' in metrics
    await api(session, "DELETE", vm_url(agent, "vm-c"))
    await api(session, "GET", vm_url(agent, "vm-c"), expect=404)

    # Finished VMIs outlive another restart until deleted; a deleted one stays deleted.
    await agent.kill9()
    await agent.start()
    listed = await api(session, "GET", agent.url + "/v1/vmis")
    finals = {i["metadata"]["name"]: i["status"]["reason"] for i in listed["items"]}
    assert finals == {"vm-a": "GuestShutdown", "vm-b": "QemuExited"}
    await api(session, "DELETE", vm_url(agent, "vm-a"))
    assert [p.name for p in (settings.data_dir / "finished").iterdir()] == [
        RunDir.for_vm(settings.run_dir, "default", "vm-b").root.name + ".json"
    ]


async def _powerdown_directly(run: RunDir) -> None:
    """Press vm's power button over its QMP socket (free while the agent is dead)."""
    client = QMPClient("test")
    async with asyncio.timeout(20):
        await client.connect(str(run.launch_paths.qmp_socket))
        try:
            listener = EventListener("SHUTDOWN")
            with client.listen(listener):
                await client.execute("system_powerdown")
                await listener.get()
        finally:
            await client.disconnect()


async def _cli_console(agent: AgentProcess, name: str) -> None:
    argv = [sys.executable, "-m", "controllers.cli", "console", name, "--agent", agent.url]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            seen = b""
            while b"tick" not in seen:
                chunk = await proc.stdout.read(4096)
                assert chunk, seen[-300:]
                seen += chunk
            proc.stdin.write(b"\x1d")
            await proc.stdin.drain()
            await proc.stdout.read()
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
