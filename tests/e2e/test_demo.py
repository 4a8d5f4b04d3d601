"""``diskplane demo`` (what ``make run`` runs) shows every step and leaves nothing behind.

One real run as a subprocess: ``diskplane up``, the aiohttp disk server, the import,
one TCG boot of the tiny guest, the halt, docker-registry push/inspect/pull.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# The demo's own step timeouts are longer; this bounds the whole run (one boot).
DEMO_TIMEOUT_S = 300.0

STEPS = [
    r"\] guest disk built: tiny-guest\.qcow2, qcow2 [\d.]+ MiB",
    r"\] stack up: diskplane up \(pid \d+\)",
    r"\] served over HTTP: http://127\.0\.0\.1:\d+/tiny-guest\.qcow2",
    r"\] DataVolume default/demo-disk applied",
    r"ImportInProgress|Succeeded +100",
    r"\] DataVolume demo-disk Succeeded",
    r"\] VirtualMachine default/demo applied \(runStrategy Always\)",
    r"\] VM Running on (tcg|kvm) \(",
    r"console \| DISKPLANE-GUEST READY",
    r"\] guest console reached 'DISKPLANE-GUEST READY'",
    r"\] VM demo: runStrategy Halted",
    r"\] VM demo Stopped",
    r"\] registry up: docker-registry on 127\.0\.0\.1:\d+",
    r"\] volume default/demo-disk pushed as a containerDisk",
    r"inspect: sha256:[0-9a-f]{64}",
    r"\] pulled back \S+@sha256:[0-9a-f]{64}: [\d.]+ MiB, sha256 matches",
    r"\] summary",
    r"import +[\d.]+ MiB qcow2 over HTTP",
    r"digest +sha256:[0-9a-f]{64}",
    r"pulled back +identical",
    r"\] deleted demo, demo-disk",
    r"\] diskplane up stopped",
    r"\] done: everything the demo started is stopped",
]


def processes_mentioning(*needles: str) -> list[str]:
    """Command lines of live processes that name any of ``needles`` (qemu, up, registry)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(needle in cmdline for needle in needles):
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.mark.guest
@pytest.mark.timeout(DEMO_TIMEOUT_S + 30)
def test_demo_shows_each_step_and_cleans_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    run = subprocess.run(
        [sys.executable, "-m", "controllers.cli", "--data-dir", str(data_dir), "demo"],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        check=False,
    )
    out = run.stdout
    assert run.returncode == 0, f"stdout:\n{out}\nstderr:\n{run.stderr}"
    position = 0
    for step in STEPS:  # in this order
        match = re.compile(step).search(out, position)
        assert match, f"{step!r} missing after offset {position} in:\n{out}"
        position = match.end()
    temp = re.search(r"temp dir (\S+)", out)
    assert temp is not None
    assert not Path(temp.group(1)).exists()
    assert processes_mentioning(str(data_dir), temp.group(1)) == []
    assert not (data_dir / "volumes" / "default" / "demo-disk").exists()


def test_a_failing_step_says_why_exits_1_and_cleans_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "not-a-dir"
    data_dir.write_text("")  # `diskplane up` cannot open its store here
    run = subprocess.run(
        [sys.executable, "-m", "controllers.cli", "--data-dir", str(data_dir), "demo"],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    assert run.returncode == 1, run.stdout
    assert "error: diskplane demo failed: diskplane up exited at start" in run.stderr
    assert "failed: everything the demo started is stopped" in run.stdout
    temp = re.search(r"temp dir (\S+)", run.stdout)
    assert temp is not None
    assert not Path(temp.group(1)).exists()
    assert processes_mentioning(str(data_dir), temp.group(1)) == []
