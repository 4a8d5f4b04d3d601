"""``diskplane doctor``: the host table, and a non-zero exit only for hard requirements."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from controllers.doctor import Check, exit_code, render_table, run_checks

DISKPLANE = str(Path(sys.executable).parent / "diskplane")
ROWS = [
    "python",
    "qemu-img",
    "qemu-system-x86_64",
    "/dev/kvm",
    "docker-registry",
    "skopeo",
    "test guest",
    "data dir",
]


def test_doctor_prints_the_table_and_exits_0(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    done = subprocess.run(
        [DISKPLANE, "--data-dir", str(data_dir), "doctor"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "DETAIL"]
    assert [line.split("  ")[0] for line in lines[1:]] == ROWS
    kvm = next(line for line in lines if line.startswith("/dev/kvm"))
    assert "kvm:" in kvm or "TCG fallback" in kvm
    assert data_dir.is_dir()
    assert f"free in {data_dir}" in done.stdout


def test_doctor_without_qemu_on_path_exits_non_zero(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    done = subprocess.run(
        [DISKPLANE, "--data-dir", str(tmp_path / "data"), "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(empty), "HOME": str(tmp_path)},
    )
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    by_name = {row["name"]: row for row in report["checks"]}
    assert [row["name"] for row in report["checks"]] == ROWS
    assert by_name["qemu-img"]["status"] == "missing"
    assert by_name["qemu-img"]["hard"] is True
    assert by_name["skopeo"]["status"] == "warn"
    assert "not probed" in by_name["/dev/kvm"]["detail"]
    assert report["exit_code"] == 1


@pytest.mark.parametrize(
    ("rows", "code"),
    [
        pytest.param([Check("qemu-img", "ok", "7.2", hard=True)], 0, id="all-ok"),
        pytest.param([Check("skopeo", "warn", "not on PATH")], 0, id="soft-missing"),
        pytest.param(
            [Check("qemu-img", "missing", "not on PATH", hard=True)], 1, id="hard-missing"
        ),
    ],
)
def test_exit_code_counts_only_hard_requirements(rows: list[Check], code: int) -> None:
    assert exit_code(rows) == code


def test_table_marks_problems_in_capitals() -> None:
    table = render_table(
        [Check("qemu-img", "missing", "not on PATH", hard=True), Check("data dir", "ok", "9 GiB")]
    )
    assert table.splitlines()[1].split()[:2] == ["qemu-img", "MISSING"]
    assert table.splitlines()[2].split()[:3] == ["data", "dir", "ok"]


async def test_run_checks_creates_the_data_dir(tmp_path: Path) -> None:
    checks = await run_checks(tmp_path / "new" / "data")
    assert [c.name for c in checks] == ROWS
    assert (tmp_path / "new" / "data").is_dir()
    assert exit_code(checks) == 0
