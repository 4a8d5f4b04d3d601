"""VMI spec parsing and the QEMU argv built from it (pure functions, no QEMU)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from virtnode.argv import LaunchOptions, LaunchPaths, build_argv, opt_value
from virtnode.blockdev import AttachedDisk
from virtnode.errors import SpecError
from virtnode.spec import parse_quantity, parse_vmi

PATHS = LaunchPaths(
    qmp_socket=Path("/run/vm/qmp.sock"),
    serial_socket=Path("/run/v,m/serial.sock"),
    serial_log=Path("/run/vm/serial.log"),
    pidfile=Path("/run/vm/qemu.pid"),
)


def vmi(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "domain": {"memory": {"guest": "256Mi"}, "devices": {"disks": []}},
        "volumes": [],
    }
    base.update(spec)
    return {"metadata": {"name": "vm1", "namespace": "ns1"}, "spec": base}


def with_disks(disks: list[dict[str, Any]], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    obj = vmi(volumes=volumes)
    obj["spec"]["domain"]["devices"]["disks"] = disks
    return obj


def options_after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("256Mi", 256 * 2**20), ("1Gi", 2**30), ("1G", 10**9), ("1048576", 2**20), (512, 512)],
)
def test_quantities(value: object, expected: int) -> None:
    assert parse_quantity(value, "x") == expected


@pytest.mark.parametrize("value", ["1.5Gi", "-1", "12 Mi", "1Pi", True, None])
def test_bad_quantities_are_refused(value: object) -> None:
    with pytest.raises(SpecError, match="quantity"):
        parse_quantity(value, "memory")


def test_cpu_memory_and_defaults() -> None:
    obj = vmi()
    obj["spec"]["domain"]["cpu"] = {"sockets": 2, "cores": 2, "threads": 1}
    obj["spec"]["domain"]["memory"] = {}
    obj["spec"]["domain"]["resources"] = {"requests": {"memory": "512Mi"}}
    spec = parse_vmi(obj)
    argv = build_argv(spec, [], PATHS, LaunchOptions())
    assert options_after(argv, "-smp") == ["4,sockets=2,cores=2,threads=1"]
    assert options_after(argv, "-m") == ["512M"]
    assert options_after(argv, "-machine") == ["q35"]
    assert options_after(argv, "-accel") == ["tcg"]
    for flag in ("-S", "-nodefaults", "-no-user-config", "-daemonize", "-no-shutdown"):
        assert flag in argv
    assert options_after(argv, "-display") == ["none"]
    assert spec.grace_period_s == 30


def test_sockets_and_serial_log_escape_commas() -> None:
    argv = build_argv(parse_vmi(vmi()), [], PATHS, LaunchOptions())
    chardevs = options_after(argv, "-chardev")
    assert chardevs[0] == "socket,id=qmp,path=/run/vm/qmp.sock,server=on,wait=off"
    assert "path=/run/v,,m/serial.sock," in chardevs[1]
    assert "logfile=/run/vm/serial.log" in chardevs[1]
    assert options_after(argv, "-mon") == ["chardev=qmp,mode=control"]


def test_control_characters_never_reach_qemu() -> None:
    with pytest.raises(SpecError, match="control characters"):
        opt_value("/tmp/a\nb")


def test_disks_become_blockdev_json() -> None:
    obj = with_disks(
        [
            {"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1, "cache": "none"},
            {"name": "data", "serial": "D-1,x=y"[:3] + "1", "cache": "writethrough"},
            {"name": "iso", "cdrom": {}},
            {"name": "sc", "disk": {"bus": "scsi"}, "io": "threads"},
        ],
        [
            {"name": "root", "persistentVolumeClaim": {"claimName": "pvc-a"}},
            {"name": "data", "dataVolume": {"name": "dv-b"}},
            {"name": "iso", "cloudInitNoCloud": {"userData": "#cloud-config"}},
            {"name": "sc", "emptyDisk": {"capacity": "1Gi"}},
        ],
    )
    spec = parse_vmi(obj)
    evil = Path("/pool/ns1/pvc,a/disk.img")
    attached = [
        AttachedDisk(spec.disks[0], evil, "raw"),
        AttachedDisk(spec.disks[1], Path("/pool/b.img"), "raw"),
        AttachedDisk(spec.disks[2], Path("/run/ci.iso"), "raw", readonly=True, sata_unit=0),
        AttachedDisk(spec.disks[3], Path("/run/sc.qcow2"), "qcow2"),
    ]
    argv = build_argv(spec, attached, PATHS, LaunchOptions())
    nodes = [json.loads(v) for v in options_after(argv, "-blockdev")]
    devices = [json.loads(v) for v in options_after(argv, "-device") if v.startswith("{")]
    assert nodes[0] == {
        "driver": "file",
        "node-name": attached[0].file_node_name,
        "filename": str(evil),  # commas stay data inside JSON
        "read-only": False,
        "cache": {"direct": True, "no-flush": False},
    }
    assert nodes[1]["driver"] == "raw"
    assert nodes[1]["file"] == attached[0].file_node_name
    by_id = {d["id"]: d for d in devices if "id" in d}
    assert by_id["ua-root"]["driver"] == "virtio-blk-pci"
    assert by_id["ua-root"]["bootindex"] == 1
    assert by_id["ua-data"]["serial"] == "D-11"
    assert by_id["ua-data"]["write-cache"] == "off"
    assert by_id["ua-iso"] == {
        "id": "ua-iso",
        "driver": "ide-cd",
        "bus": "ide.0",
        "drive": attached[2].node_name,
    }
    assert nodes[4]["read-only"] is True
    assert by_id["ua-sc"]["driver"] == "scsi-hd"
    assert by_id["scsi0"]["driver"] == "virtio-scsi-pci"
    assert nodes[6]["aio"] == "threads"
    assert [d["id"] for d in devices if d["driver"] == "pcie-root-port"] == [
        "hp0",
        "hp1",
        "hp2",
        "hp3",
    ]
    assert all(len(a.node_name) <= 31 and len(a.file_node_name) <= 31 for a in attached)
    # The default NIC comes after the disks so the disks keep their PCI slots.
    assert argv.index("-netdev") > max(i for i, a in enumerate(argv) if a == "-blockdev")
    assert devices[-1]["id"] == "net-default"


def test_volume_without_disk_is_auto_attached() -> None:
    spec = parse_vmi(with_disks([], [{"name": "v", "emptyDisk": {"capacity": "1Mi"}}]))
    assert [(d.name, d.bus) for d in spec.disks] == [("v", "virtio")]


def test_kernel_boot_from_host(tmp_path: Path) -> None:
    kernel, initrd = tmp_path / "vmlinux", tmp_path / "initrd.gz"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    obj = vmi()
    obj["spec"]["domain"]["firmware"] = {
        "kernelBoot": {
            "kernelArgs": "console=ttyS0 mode=wait",
            "host": {"kernelPath": str(kernel), "initrdPath": str(initrd)},
        }
    }
    argv = build_argv(parse_vmi(obj), [], PATHS, LaunchOptions(incoming=True))
    assert options_after(argv, "-kernel") == [str(kernel)]
    assert options_after(argv, "-initrd") == [str(initrd)]
    assert options_after(argv, "-append") == ["console=ttyS0 mode=wait"]
    assert options_after(argv, "-incoming") == ["defer"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o["metadata"].update(name="Bad_Name"), "DNS name"),
        (lambda o: o["spec"]["domain"].update(memory={}), "memory"),
        (lambda o: o["spec"]["domain"].update(memory={"guest": "8Mi"}), "between 16Mi"),
        (lambda o: o["spec"]["domain"].update(cpu={"cores": 0}), "cores"),
        (lambda o: o["spec"]["domain"].update(cpu={"cores": 16, "sockets": 8}), "vCPUs"),
        (lambda o: o["spec"].update(volumes=[{"name": "a", "hostDisk": {}}]), "not supported"),
        (
            lambda o: o["spec"].update(
                volumes=[{"name": "a", "emptyDisk": {"capacity": "1Mi"}, "dataVolume": {}}]
            ),
            "exactly one source",
        ),
        (
            lambda o: o["spec"]["domain"]["devices"].update(disks=[{"name": "x"}]),
            "no volume of the same name",
        ),
        (
            lambda o: o["spec"]["domain"].update(
                firmware={"kernelBoot": {"kernelArgs": "a;b", "host": {"kernelPath": "/x"}}}
            ),
            "kernelArgs",
        ),
        (
            lambda o: o["spec"]["domain"].update(
                firmware={"kernelBoot": {"container": {"image": "x"}}}
            ),
            "container is not supported",
        ),
    ],
    ids=[
        "name",
        "no-memory",
        "tiny-memory",
        "zero-cores",
        "too-many-vcpus",
        "unsupported-source",
        "two-sources",
        "disk-without-volume",
        "kernel-args",
        "kernel-container",
    ],
)
def test_invalid_specs_are_refused(mutate: Any, message: str) -> None:
    obj = vmi()
    mutate(obj)
    with pytest.raises(SpecError, match=message):
        parse_vmi(obj)


@pytest.mark.parametrize(
    ("disk", "message"),
    [
        ({"name": "d", "serial": "has space"}, "serial"),
        ({"name": "d", "serial": "x" * 21}, "serial"),
        ({"name": "d", "cache": "unsafe"}, "cache"),
        ({"name": "d", "io": "native", "cache": "writeback"}, "io native needs cache none"),
        ({"name": "d", "lun": {}}, "lun"),
        ({"name": "d", "cdrom": {"bus": "virtio"}}, "cdrom needs bus"),
        ({"name": "d", "disk": {"bus": "ide"}}, "bus"),
        ({"name": "d", "bootOrder": 0}, "bootOrder"),
    ],
    ids=["serial-space", "serial-long", "cache", "io", "lun", "cdrom-virtio", "bus", "boot"],
)
def test_invalid_disks_are_refused(disk: dict[str, Any], message: str) -> None:
    obj = with_disks([disk], [{"name": "d", "emptyDisk": {"capacity": "1Mi"}}])
    with pytest.raises(SpecError, match=message):
        parse_vmi(obj)


def nic_vmi(devices: dict[str, Any], networks: list[dict[str, Any]] | None) -> dict[str, Any]:
    obj = vmi()
    obj["metadata"]["uid"] = "uid-1"
    obj["spec"]["domain"]["devices"].update(devices)
    if networks is not None:
        obj["spec"]["networks"] = networks
    return obj


POD = [{"name": "net1", "pod": {}}]


@pytest.mark.parametrize(
    ("devices", "networks", "expected"),
    [
        # KubeVirt's default: one masquerade interface "default" on the pod network.
        ({}, None, [("default", "virtio-net-pci", "02:98:d5:a7:2b:34")]),
        ({"autoattachPodInterface": False}, None, []),
        (
            {"interfaces": [{"name": "net1", "slirp": {}, "macAddress": "02:00:00:00:00:01"}]},
            POD,
            [("net1", "virtio-net-pci", "02:00:00:00:00:01")],
        ),
        (
            {"interfaces": [{"name": "net1", "bridge": {}, "model": "e1000e"}]},
            POD,
            [("net1", "e1000e", "02:43:c2:47:3f:ac")],
        ),
    ],
    ids=["default", "autoattach-off", "slirp-mac", "bridge-e1000e"],
)
def test_nic_argv(
    devices: dict[str, Any],
    networks: list[dict[str, Any]] | None,
    expected: list[tuple[str, str, str]],
) -> None:
    argv = build_argv(parse_vmi(nic_vmi(devices, networks)), [], PATHS, LaunchOptions())
    netdevs = [json.loads(v) for v in options_after(argv, "-netdev")]
    parsed = [json.loads(v) for v in options_after(argv, "-device") if v.startswith("{")]
    nics = [d for d in parsed if "netdev" in d]
    assert netdevs == [{"type": "user", "id": f"netdev-{name}"} for name, _, _ in expected]
    assert nics == [
        {
            "driver": driver,
            "id": f"net-{name}",
            "netdev": f"netdev-{name}",
            "mac": mac,
            "romfile": "",
        }
        for name, driver, mac in expected
    ]


def test_nic_ports_become_hostfwd_on_localhost() -> None:
    iface = {"name": "net1", "ports": [{"port": 22}, {"port": 53, "protocol": "UDP"}]}
    spec = parse_vmi(nic_vmi({"interfaces": [iface]}, POD))
    ports = tuple(
        dataclasses.replace(p, host_port=40000 + i) for i, p in enumerate(spec.interfaces[0].ports)
    )
    spec = dataclasses.replace(
        spec, interfaces=(dataclasses.replace(spec.interfaces[0], ports=ports),)
    )
    argv = build_argv(spec, [], PATHS, LaunchOptions())
    (netdev,) = [json.loads(v) for v in options_after(argv, "-netdev")]
    assert netdev["hostfwd"] == [
        {"str": "tcp:127.0.0.1:40000-:22"},
        {"str": "udp:127.0.0.1:40001-:53"},
    ]
