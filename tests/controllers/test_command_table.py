"""The command table that lets ``diskplane X`` import only X's module stays true."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from controllers import cli


@pytest.mark.parametrize("module", list(cli.COMMAND_MODULES))
def test_table_matches_what_each_module_registers(module: str) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(module).register(sub)
    assert tuple(sub.choices) == cli.COMMAND_MODULES[module]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["import", "x"], ["cdi.cli"], id="command"),
        pytest.param(["--data-dir", "push", "pull"], ["containerdisk.cli"], id="option-value"),
        pytest.param(["--data-dir=/x", "doctor"], ["controllers.doctor"], id="option-equals"),
        pytest.param(["--help"], list(cli.COMMAND_MODULES), id="help-needs-all"),
        pytest.param(["nonsense"], list(cli.COMMAND_MODULES), id="unknown-needs-all"),
    ],
)
def test_modules_for(argv: list[str], expected: list[str]) -> None:
    assert cli.modules_for(argv) == expected


def test_import_command_does_not_load_the_node_agent() -> None:
    probe = (
        "import sys; from controllers import cli; "
        "cli.build_parser(cli.modules_for(['import'])); "
        "print('virtnode.agent' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "controllers.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for commands in cli.COMMAND_MODULES.values():
        for command in commands:
            assert command in out.stdout


def test_console_names_a_missing_vmi(tmp_path: object) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "controllers.cli", "--data-dir", str(tmp_path), "console", "ghost"],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 1
    assert "ghost" in out.stderr
