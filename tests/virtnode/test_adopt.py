"""A surviving process the agent cannot re-adopt is stopped and reported, not left running.

No guest: the run dir points at a live ``sleep`` (right pid and start time) that has
no QMP socket, as a QEMU with a broken monitor would look to a restarted agent.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from virtnode import AccelInfo, AgentSettings, NodeAgent, Phase, QmpTimeouts
from virtnode.process import start_ticks
from virtnode.rundir import RunDir

VMI = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachineInstance",
    "metadata": {"name": "stuck", "namespace": "default"},
    "spec": {
        "domain": {"memory": {"guest": "64Mi"}, "devices": {}},
        "volumes": [{"name": "scratch", "emptyDisk": {"capacity": "1Mi"}}],
    },
}


async def test_unadoptable_survivor_is_stopped_and_failed(data_dir: Path) -> None:
    settings = AgentSettings(data_dir=data_dir, qmp=QmpTimeouts(connect=0.5, command=1, block=1))
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        ticks = start_ticks(proc.pid)
        assert ticks is not None
        run = RunDir.for_vm(settings.run_dir, "default", "stuck")
        run.create()
        run.write_json(run.vmi_file, VMI)
        run.write_json(run.state_file, {"pid": proc.pid, "startTicks": ticks, "disks": {}})
        agent = NodeAgent(settings, accel=AccelInfo("tcg", "test", ("-accel", "tcg")))
        await agent.start()
        try:
            vm = agent.get("default", "stuck")
            assert (vm.phase, vm.reason) == (Phase.FAILED, "AdoptFailed")
            assert "default/stuck" in vm.message
            assert "it was stopped" in vm.message
            assert await asyncio.to_thread(proc.wait, 5) != 0
            assert not run.root.exists()
            assert [r["reason"] for r in agent.finished_records.load()] == ["AdoptFailed"]
        finally:
            await agent.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
