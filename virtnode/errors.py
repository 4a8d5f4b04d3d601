"""virtnode's exceptions: every error the node agent raises is one of these.

::

    VirtnodeError
     ├── SpecError              the VMI spec is invalid or asks for something unsupported
     ├── VmNotFoundError        no VMI with that namespace/name on this node
     ├── VmStateError           the action does not fit the VM's current phase
     │    └── VmExistsError     a VMI with that namespace/name already runs here
     ├── DiskError              preparing, resizing or copying a disk failed
     ├── LaunchError            QEMU could not be started (argv, permissions, early exit)
     ├── QmpError               talking to QEMU's monitor failed
     │    ├── QmpConnectError   the QMP socket did not answer or refused the handshake
     │    ├── QmpTimeoutError   a QMP call took longer than its named timeout
     │    ├── QmpCommandError   QEMU answered a command with an error (``error_class``)
     │    ├── QmpSessionStateError  the session was used in a state that forbids the call
     │    └── QmpDisconnectedError  QEMU closed the monitor (usually: it exited)
     ├── ConsoleError           the serial console socket could not be reached
     ├── MigrationError         a live migration failed or was refused
     ├── AgentUnavailableError  (AgentClient) the node agent's API did not answer
     └── DriverUnavailableError the configured driver (e.g. libvirt) cannot run on this host

Third-party errors are translated in exactly one place each: :mod:`virtnode.qmp`
for ``qemu.qmp``, :mod:`virtnode.libvirt_driver` for libvirt, :mod:`virtnode.client`
and :mod:`virtnode.migration` for aiohttp client errors, and the module that owns
the resource for files and processes (``OSError``).
"""

from __future__ import annotations


class VirtnodeError(Exception):
    """Base class of every error raised by virtnode."""


class SpecError(VirtnodeError):
    """The VMI spec is invalid or asks for something this agent does not support."""


class VmNotFoundError(VirtnodeError):
    """No VMI with that namespace/name exists on this node."""


class VmStateError(VirtnodeError):
    """The requested action does not fit the VM's current phase."""


class VmExistsError(VmStateError):
    """A VMI with that namespace/name already exists on this node."""


class DiskError(VirtnodeError):
    """Preparing, resizing, snapshotting or copying a disk failed."""


class LaunchError(VirtnodeError):
    """QEMU could not be started."""


class QmpError(VirtnodeError):
    """Talking to QEMU's monitor (QMP) failed."""


class QmpConnectError(QmpError):
    """The QMP socket did not answer or the capabilities handshake failed."""


class QmpTimeoutError(QmpError):
    """A QMP call did not complete within its timeout."""


class QmpCommandError(QmpError):
    """QEMU answered a QMP command with an error."""

    def __init__(self, message: str, error_class: str) -> None:
        super().__init__(message)
        self.error_class = error_class


class QmpSessionStateError(QmpError):
    """The QMP session was used in a state that does not allow the call."""


class QmpDisconnectedError(QmpError):
    """QEMU closed the monitor connection (usually because it exited)."""


class ConsoleError(VirtnodeError):
    """The serial console of a VM could not be reached."""


class MigrationError(VirtnodeError):
    """A live migration failed or was refused."""


class AgentUnavailableError(VirtnodeError):
    """The node agent's HTTP API did not answer (raised by :class:`virtnode.client.AgentClient`)."""


class DriverUnavailableError(VirtnodeError):
    """The configured VM driver cannot run on this host."""


def name_vmi(exc: VirtnodeError, key: str) -> VirtnodeError:
    """Make ``exc``'s message name the VMI ``key`` (``ns/name``) when it does not yet.

    Used where a VMI's request fails (create, actions), so every error a client sees
    says which VMI it is about, whichever layer raised it; type and fields are kept.
    """
    message = str(exc)
    if key not in message:
        exc.args = (f"VMI {key}: {message}", *exc.args[1:])
    return exc
