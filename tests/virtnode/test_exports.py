"""virtnode's public surface is pinned: adding or removing a name is a deliberate change."""

from __future__ import annotations

import virtnode


def test_public_names_are_pinned() -> None:
    assert sorted(virtnode.__all__) == sorted(
        [
            "AccelInfo",
            "AgentClient",
            "AgentSettings",
            "AgentUnavailableError",
            "ConsoleError",
            "DiskError",
            "DriverUnavailableError",
            "LaunchError",
            "LaunchOptions",
            "LaunchPaths",
            "MigrationError",
            "NodeAgent",
            "Phase",
            "QmpCommandError",
            "QmpConnectError",
            "QmpDisconnectedError",
            "QmpError",
            "QmpEvent",
            "QmpSession",
            "QmpSessionStateError",
            "QmpState",
            "QmpTimeoutError",
            "QmpTimeouts",
            "SpecError",
            "VirtnodeError",
            "VirtualMachine",
            "VmExistsError",
            "VmNotFoundError",
            "VmStateError",
            "VmiSpec",
            "build_argv",
            "choose_accelerator",
            "parse_vmi",
        ]
    )


def test_every_error_is_a_virtnode_error() -> None:
    for name in virtnode.__all__:
        obj = getattr(virtnode, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, virtnode.VirtnodeError), name
