"""Pod-network NICs: KubeVirt ``interfaces``/``networks`` as a QEMU user-mode network.

``spec.domain.devices.interfaces[]`` (binding ``masquerade``, ``bridge`` or
``slirp``; ``model``; ``macAddress``; ``ports[]``) paired by name with
``spec.networks[]`` (``pod: {}`` only) becomes one ``-netdev user`` backend and
one NIC (``virtio-net-pci`` by default). Every binding is the same user-mode
network here: the guest is 10.0.2.15 behind QEMU's NAT. A declared port is
forwarded from ``127.0.0.1:<host port>`` (picked by the agent, see
:func:`assign_host_ports`) to the guest port.

As in KubeVirt, a VMI with neither interfaces nor networks gets one
``default`` interface with ``masquerade`` on the pod network, unless
``spec.domain.devices.autoattachPodInterface`` is ``false``.

Parsing and the argv pieces are pure; only :func:`assign_host_ports` does I/O
(it binds sockets to find free ports).
"""

from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from virtnode.errors import SpecError
from virtnode.fields import as_list, as_mapping

Binding = Literal["masquerade", "bridge", "slirp"]
Protocol = Literal["TCP", "UDP"]
BINDINGS: tuple[Binding, ...] = ("masquerade", "bridge", "slirp")
UNSUPPORTED_BINDINGS = ("sriov", "passt", "binding", "macvtap")
#: KubeVirt interface model -> QEMU device driver.
MODELS = {"virtio": "virtio-net-pci", "e1000": "e1000", "e1000e": "e1000e", "rtl8139": "rtl8139"}
#: The guest address on QEMU's user-mode network (its built-in DHCP hands it out).
GUEST_IP = "10.0.2.15"
HOST_IP = "127.0.0.1"
DEFAULT_NAME = "default"
MAX_INTERFACES = 8
MAX_PORTS = 32

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")


@dataclass(frozen=True)
class Port:
    """One ``ports[]`` entry; ``host_port`` is filled in by :func:`assign_host_ports`."""

    port: int
    protocol: Protocol = "TCP"
    name: str = ""
    host_port: int | None = None


@dataclass(frozen=True)
class Interface:
    name: str
    binding: Binding
    model: str
    mac: str
    ports: tuple[Port, ...] = ()

    @property
    def netdev_id(self) -> str:
        return f"netdev-{self.name}"

    @property
    def device_id(self) -> str:
        return f"net-{self.name}"


def parse_interfaces(
    spec: Mapping[str, Any], devices: Mapping[str, Any], uid: str
) -> tuple[Interface, ...]:
    """The VMI's NICs; ``uid`` seeds the MAC of interfaces that give none."""
    auto = devices.get("autoattachPodInterface", True)
    if not isinstance(auto, bool):
        raise SpecError("spec.domain.devices.autoattachPodInterface must be true or false")
    raw_ifaces = as_list(devices.get("interfaces", []), "spec.domain.devices.interfaces")
    raw_nets = as_list(spec.get("networks", []), "spec.networks")
    if not raw_ifaces and not raw_nets:
        if not auto:
            return ()
        raw_ifaces = [{"name": DEFAULT_NAME, "masquerade": {}}]
        raw_nets = [{"name": DEFAULT_NAME, "pod": {}}]
    networks = _parse_networks(raw_nets)
    if len(raw_ifaces) > MAX_INTERFACES:
        raise SpecError(f"spec.domain.devices.interfaces has more than {MAX_INTERFACES} entries")
    ifaces = tuple(
        parse_interface(raw, f"spec.domain.devices.interfaces[{i}]", uid)
        for i, raw in enumerate(raw_ifaces)
    )
    names = [iface.name for iface in ifaces]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise SpecError(f"interface name {name!r} is used twice")
        if name not in networks:
            raise SpecError(
                f"spec.domain.devices.interfaces[{index}] ({name!r}) has no network "
                "of the same name in spec.networks"
            )
    for name in networks:
        if name not in names:
            raise SpecError(f"network {name!r} in spec.networks has no interface of that name")
    macs = [iface.mac for iface in ifaces]
    if len(set(macs)) != len(macs):
        raise SpecError("two interfaces have the same macAddress")
    return ifaces


def parse_interface(raw: object, where: str, uid: str) -> Interface:
    i = as_mapping(raw, where)
    name = i.get("name")
    if not isinstance(name, str) or not _LABEL.match(name):
        raise SpecError(f"{where}.name {name!r} must be a lowercase DNS label (a-z, 0-9, '-')")
    for key in UNSUPPORTED_BINDINGS:
        if key in i:
            raise SpecError(f"{where}.{key} ({name!r}): only masquerade, bridge or slirp work here")
    bindings = [b for b in BINDINGS if b in i]
    if len(bindings) > 1:
        raise SpecError(f"{where} ({name!r}) names {len(bindings)} bindings; pick one")
    model = i.get("model", "virtio")
    if model not in MODELS:
        raise SpecError(f"{where}.model {model!r} is not one of {', '.join(MODELS)}")
    mac = i.get("macAddress")
    return Interface(
        name=name,
        binding=bindings[0] if bindings else "masquerade",
        model=str(model),
        mac=derived_mac(uid, name) if mac is None else parse_mac(mac, f"{where}.macAddress"),
        ports=_ports(i.get("ports", []), f"{where}.ports"),
    )


def parse_mac(value: object, what: str) -> str:
    """A unicast MAC (``02:00:00:aa:bb:cc`` or with ``-``) in lowercase colon form."""
    if not isinstance(value, str) or not _MAC.match(value):
        raise SpecError(f"{what} {value!r} is not a MAC address like 02:00:00:aa:bb:cc")
    mac = value.lower().replace("-", ":")
    if int(mac[:2], 16) & 1:
        raise SpecError(f"{what} {value!r} is a multicast address; a NIC needs a unicast one")
    return mac


def derived_mac(uid: str, name: str) -> str:
    """A stable, locally administered unicast MAC for interface ``name`` of VMI ``uid``."""
    digest = hashlib.sha256(f"{uid}/{name}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _parse_networks(raw: list[Any]) -> set[str]:
    names: set[str] = set()
    pods = 0
    for index, entry in enumerate(raw):
        where = f"spec.networks[{index}]"
        n = as_mapping(entry, where)
        name = n.get("name")
        if not isinstance(name, str) or not _LABEL.match(name):
            raise SpecError(f"{where}.name {name!r} must be a lowercase DNS label")
        if "multus" in n:
            raise SpecError(
                f"{where}.multus ({name!r}): multus networks are not supported; use pod: {{}}"
            )
        if "pod" not in n or set(n) - {"name", "pod"}:
            raise SpecError(f"{where} ({name!r}) must be a pod network (pod: {{}})")
        as_mapping(n["pod"] or {}, f"{where}.pod")
        if name in names:
            raise SpecError(f"network name {name!r} is used twice")
        names.add(name)
        pods += 1
    if pods > 1:
        raise SpecError("spec.networks has more than one pod network; KubeVirt allows one")
    return names


def _ports(raw: object, where: str) -> tuple[Port, ...]:
    entries = as_list(raw, where)
    if len(entries) > MAX_PORTS:
        raise SpecError(f"{where} has more than {MAX_PORTS} entries")
    ports: list[Port] = []
    for index, entry in enumerate(entries):
        p = as_mapping(entry, f"{where}[{index}]")
        number = p.get("port")
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            raise SpecError(f"{where}[{index}].port must be an integer 1-65535, not {number!r}")
        protocol = p.get("protocol", "TCP")
        if protocol not in ("TCP", "UDP"):
            raise SpecError(f"{where}[{index}].protocol {protocol!r} is not TCP or UDP")
        name = p.get("name", "")
        if not isinstance(name, str) or (name and not _PORT_NAME.match(name)):
            raise SpecError(f"{where}[{index}].name {name!r} must be a short lowercase name")
        port = Port(port=number, protocol=protocol, name=name)
        if any((q.port, q.protocol) == (port.port, port.protocol) for q in ports):
            raise SpecError(f"{where}[{index}]: {protocol} port {number} is declared twice")
        ports.append(port)
    return tuple(ports)


# ----- argv pieces -------------------------------------------------------------------


def netdev(iface: Interface) -> dict[str, Any]:
    """The ``-netdev`` JSON object: user-mode network, hostfwd for ports with a host port."""
    obj: dict[str, Any] = {"type": "user", "id": iface.netdev_id}
    forwards = [
        {"str": f"{p.protocol.lower()}:{HOST_IP}:{p.host_port}-:{p.port}"}
        for p in iface.ports
        if p.host_port is not None
    ]
    if forwards:
        obj["hostfwd"] = forwards
    return obj


def nic_device(iface: Interface) -> dict[str, Any]:
    """The ``-device`` JSON object; ``romfile`` empty so no iPXE ROM file is needed."""
    return {
        "driver": MODELS[iface.model],
        "id": iface.device_id,
        "netdev": iface.netdev_id,
        "mac": iface.mac,
        "romfile": "",
    }


# ----- host ports and status ---------------------------------------------------------


def free_port(protocol: Protocol) -> int:
    """A port on 127.0.0.1 that is free right now (QEMU binds it moments later)."""
    kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST_IP, 0))
        return int(sock.getsockname()[1])


def assign_host_ports(ifaces: tuple[Interface, ...]) -> tuple[Interface, ...]:
    """``ifaces`` with a free 127.0.0.1 host port chosen for every declared port."""
    return tuple(
        replace(i, ports=tuple(replace(p, host_port=free_port(p.protocol)) for p in i.ports))
        for i in ifaces
    )


def interface_status(ifaces: tuple[Interface, ...]) -> list[dict[str, Any]]:
    """``status.interfaces[]``: KubeVirt's fields plus diskplane's ``hostPorts``."""
    return [
        {
            "name": i.name,
            "mac": i.mac,
            "ipAddress": GUEST_IP,
            "ipAddresses": [GUEST_IP],
            "infoSource": "domain",
            "hostPorts": [
                {
                    "name": p.name,
                    "protocol": p.protocol,
                    "port": p.port,
                    "hostIP": HOST_IP,
                    "hostPort": p.host_port,
                }
                for p in i.ports
                if p.host_port is not None
            ],
        }
        for i in ifaces
    ]
