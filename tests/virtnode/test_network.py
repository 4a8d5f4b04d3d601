"""Pod-network NICs: parsing, and a real QEMU (``-S``, nothing boots) checked over QMP."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.virtnode.conftest import kill_all
from virtnode import AccelInfo, AgentSettings, NodeAgent, Phase
from virtnode.argv import LaunchOptions, LaunchPaths, build_argv
from virtnode.errors import SpecError
from virtnode.network import (
    GUEST_IP,
    assign_host_ports,
    derived_mac,
    interface_status,
    parse_mac,
)
from virtnode.process import ProcessIdentity, kill, launch, wait_exit
from virtnode.qmp import QmpSession
from virtnode.settings import QmpTimeouts
from virtnode.spec import VmiSpec, parse_vmi

FAST = QmpTimeouts(connect=5.0, command=5.0, block=5.0)
MAC = "02:aa:bb:cc:dd:ee"


def vmi(interfaces: Any = None, networks: Any = None, **devices: Any) -> dict[str, Any]:
    devs: dict[str, Any] = {"disks": [], **devices}
    spec: dict[str, Any] = {"domain": {"memory": {"guest": "64Mi"}, "devices": devs}}
    if interfaces is not None:
        devs["interfaces"] = interfaces
    if networks is not None:
        spec["networks"] = networks
    meta = {"name": "vm1", "namespace": "ns1", "uid": "0f3c-uid"}
    return {"metadata": meta, "spec": spec}


POD = [{"name": "default", "pod": {}}]


def test_default_is_one_masquerade_pod_interface() -> None:
    (iface,) = parse_vmi(vmi()).interfaces
    assert (iface.name, iface.binding, iface.model) == ("default", "masquerade", "virtio")
    assert iface.mac == derived_mac("0f3c-uid", "default")
    assert parse_vmi(vmi([], [])).interfaces == (iface,)


def test_autoattach_false_means_no_nic() -> None:
    assert parse_vmi(vmi(autoattachPodInterface=False)).interfaces == ()


def test_derived_mac_is_stable_unicast_and_local() -> None:
    mac = derived_mac("uid-1", "default")
    assert mac == derived_mac("uid-1", "default") != derived_mac("uid-2", "default")
    assert mac != derived_mac("uid-1", "other")
    assert int(mac[:2], 16) & 0b11 == 0b10  # locally administered, unicast
    obj = vmi()
    del obj["metadata"]["uid"]  # no uid: namespace/name seeds it
    assert parse_vmi(obj).interfaces[0].mac == derived_mac("ns1/vm1", "default")


def test_explicit_interface_fields() -> None:
    ports = [{"name": "ssh", "port": 22}, {"port": 53, "protocol": "UDP"}]
    iface_in = {
        "name": "default",
        "bridge": {},
        "model": "e1000",
        "macAddress": "02-AA-bb-cc-dd-EE",
    }
    (iface,) = parse_vmi(vmi([{**iface_in, "ports": ports}], POD)).interfaces
    assert (iface.binding, iface.model, iface.mac) == ("bridge", "e1000", MAC)
    assert [(p.name, p.protocol, p.port, p.host_port) for p in iface.ports] == [
        ("ssh", "TCP", 22, None),
        ("", "UDP", 53, None),
    ]


@pytest.mark.parametrize(
    ("interfaces", "networks", "message"),
    [
        (
            [{"name": "default", "masquerade": {}}],
            [{"name": "default", "multus": {}}],
            r"spec\.networks\[0\]\.multus",
        ),
        ([{"name": "a", "masquerade": {}}], POD, r"interfaces\[0\] \('a'\) has no network"),
        (
            [{"name": "default", "masquerade": {}}],
            [*POD, {"name": "b", "pod": {}}],
            "no interface|more than one pod",
        ),
        ([{"name": "default", "sriov": {}}], POD, r"interfaces\[0\]\.sriov"),
        ([{"name": "default", "bridge": {}, "slirp": {}}], POD, "2 bindings"),
        ([{"name": "default", "model": "ne2k_pci"}], POD, r"\.model 'ne2k_pci'"),
        ([{"name": "default", "macAddress": "01:00:5e:00:00:01"}], POD, "multicast"),
        ([{"name": "default", "macAddress": "02:00:00:00:00"}], POD, "not a MAC"),
        ([{"name": "default", "ports": [{"port": 0}]}], POD, r"ports\[0\]\.port"),
        ([{"name": "default", "ports": [{"port": 22, "protocol": "SCTP"}]}], POD, "not TCP or UDP"),
        ([{"name": "default", "ports": [{"port": 22}, {"port": 22}]}], POD, "declared twice"),
        ([{"name": "Default"}], [{"name": "Default", "pod": {}}], "DNS label"),
        ([{"name": "default"}, {"name": "default"}], POD, "used twice"),
    ],
    ids=[
        "multus",
        "no-network",
        "second-network",
        "sriov",
        "two-bindings",
        "model",
        "multicast-mac",
        "short-mac",
        "port-zero",
        "protocol",
        "port-twice",
        "name",
        "name-twice",
    ],
)
def test_invalid_networks_are_refused(interfaces: Any, networks: Any, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_vmi(vmi(interfaces, networks))


def test_parse_mac_normalises() -> None:
    assert parse_mac("02:AA:BB:CC:DD:EE", "m") == MAC
    with pytest.raises(SpecError, match="not a MAC"):
        parse_mac("02:aa-bb:cc:dd:ee", "m")  # mixed separators


def test_status_reports_guest_ip_and_host_ports() -> None:
    obj = vmi([{"name": "default", "masquerade": {}, "ports": [{"name": "ssh", "port": 22}]}], POD)
    ifaces = assign_host_ports(parse_vmi(obj).interfaces)
    (status,) = interface_status(ifaces)
    host_port = ifaces[0].ports[0].host_port
    assert host_port is not None
    assert 0 < host_port < 65536
    assert status["ipAddress"] == GUEST_IP
    assert status["mac"] == ifaces[0].mac
    assert status["hostPorts"] == [
        {"name": "ssh", "protocol": "TCP", "port": 22, "hostIP": "127.0.0.1", "hostPort": host_port}
    ]


# ----- a real QEMU -------------------------------------------------------------------


@pytest.fixture
async def nic_qemu() -> AsyncIterator[tuple[VmiSpec, QmpSession]]:
    """QEMU started from build_argv (paused, no kernel) with a NIC that forwards port 22."""
    run = Path(tempfile.mkdtemp(prefix="dpnet-"))
    paths = LaunchPaths(run / "qmp.sock", run / "serial.sock", run / "serial.log", run / "qemu.pid")
    iface = {"name": "default", "masquerade": {}, "ports": [{"name": "ssh", "port": 22}]}
    spec = parse_vmi(vmi([iface], POD))
    spec = replace(spec, interfaces=assign_host_ports(spec.interfaces))
    argv = build_argv(spec, [], paths, LaunchOptions(hotplug_ports=0))
    identity: ProcessIdentity = await launch(
        argv, pidfile=paths.pidfile, vm=spec.key, limit=20.0, run_as=None
    )
    session = QmpSession(paths.qmp_socket, vm=spec.key, timeouts=FAST)
    try:
        await session.connect()
        yield spec, session
    finally:
        await session.close()
        kill(identity)
        await asyncio.wait_for(wait_exit(identity, 0.05), 10)
        for child in run.iterdir():
            child.unlink()
        run.rmdir()


async def test_qemu_has_the_nic_netdev_and_listening_hostfwd(
    nic_qemu: tuple[VmiSpec, QmpSession],
) -> None:
    spec, session = nic_qemu
    (iface,) = spec.interfaces
    devices = [d for bus in await session.execute("query-pci") for d in bus["devices"]]
    nics = [d for d in devices if d["qdev_id"] == "net-default"]
    assert len(nics) == 1
    assert (nics[0]["id"]["vendor"], nics[0]["id"]["device"]) == (0x1AF4, 0x1000)  # virtio-net
    info = await session.execute("human-monitor-command", {"command-line": "info network"})
    assert f"net-default: index=0,type=nic,model=virtio-net-pci,macaddr={iface.mac}" in info
    assert "netdev-default: index=0,type=user" in info
    usernet = await session.execute("human-monitor-command", {"command-line": "info usernet"})
    host_port = iface.ports[0].host_port
    forward = ["TCP[HOST_FORWARD]", "127.0.0.1", str(host_port), GUEST_IP, "22"]
    rows = [line.split() for line in usernet.splitlines()]
    assert [[r[0], *r[2:6]] for r in rows if r and r[0].startswith("TCP")] == [forward]
    _reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", host_port), 5)
    writer.close()
    await writer.wait_closed()


async def test_agent_reports_host_ports_and_keeps_them_on_adoption(data_dir: Path) -> None:
    """Through the agent (SeaBIOS finds nothing to boot: no guest), then a restarted agent."""
    obj = vmi([{"name": "default", "masquerade": {}, "ports": [{"name": "web", "port": 80}]}], POD)
    settings = AgentSettings(data_dir=data_dir)
    accel = AccelInfo("tcg", "test", ("-accel", "tcg"))
    first = NodeAgent(settings, accel=accel)
    await first.start()
    try:
        vm = await first.create(obj)
        (status,) = vm.status()["interfaces"]
        (forward,) = status["hostPorts"]
        assert (status["mac"], forward["port"]) == (derived_mac("0f3c-uid", "default"), 80)
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", forward["hostPort"]), 5
        )
        writer.close()
        await writer.wait_closed()
    except BaseException:
        await kill_all(first)
        raise
    await first.close()  # QEMU keeps running
    second = NodeAgent(settings, accel=accel)
    await second.start()
    try:
        adopted = second.get("ns1", "vm1")
        assert adopted.phase is Phase.RUNNING
        assert adopted.status()["interfaces"] == [status]
    finally:
        await kill_all(second)
