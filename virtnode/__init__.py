"""virtnode: the node agent that turns VirtualMachineInstance specs into QEMU guests over QMP.

Public surface (see docs/virtnode.md): :class:`NodeAgent` with its
:class:`AgentSettings`, the per-VM :class:`VirtualMachine` and its
:class:`Phase`, the spec parser, the QMP session, and the error tree.
"""

from virtnode.agent import NodeAgent, choose_accelerator
from virtnode.argv import LaunchOptions, LaunchPaths, build_argv
from virtnode.client import AgentClient
from virtnode.errors import (
    AgentUnavailableError,
    ConsoleError,
    DiskError,
    DriverUnavailableError,
    LaunchError,
    MigrationError,
    QmpCommandError,
    QmpConnectError,
    QmpDisconnectedError,
    QmpError,
    QmpSessionStateError,
    QmpTimeoutError,
    SpecError,
    VirtnodeError,
    VmExistsError,
    VmNotFoundError,
    VmStateError,
)
from virtnode.qmp import QmpEvent, QmpSession, QmpState
from virtnode.settings import AgentSettings, QmpTimeouts
from virtnode.spec import VmiSpec, parse_vmi
from virtnode.vm import VirtualMachine
from virtnode.vmtypes import AccelInfo, Phase

__all__ = [
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
