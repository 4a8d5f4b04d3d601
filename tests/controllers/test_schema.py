"""The API schema: upstream YAML applies, upstream-only fields warn, unknown fields are rejected."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from controllers.api import (
    DATAVOLUME,
    VIRTUALMACHINE,
    VIRTUALMACHINEINSTANCE,
    parse_quantity,
    upstream_paths,
    validate_object,
)
from controllers.errors import SchemaError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

DV: dict[str, Any] = {
    "apiVersion": "cdi.kubevirt.io/v1beta1",
    "kind": "DataVolume",
    "metadata": {"name": "d"},
    "spec": {
        "source": {"http": {"url": "http://x/disk.qcow2"}},
        "storage": {"resources": {"requests": {"storage": "1Gi"}}},
    },
}
VM: dict[str, Any] = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachine",
    "metadata": {"name": "v"},
    "spec": {
        "runStrategy": "Always",
        "template": {
            "spec": {
                "domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
                "volumes": [{"name": "root", "dataVolume": {"name": "d"}}],
            }
        },
    },
}


def with_(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with ``value`` set at dotted ``path`` (``[0]`` for list items)."""
    obj = copy.deepcopy(base)
    parts = path.replace("[", ".[").split(".")
    node: Any = obj
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node.setdefault(part, {})
    last = parts[-1]
    if last.startswith("["):
        node[int(last[1:-1])] = value
    else:
        node[last] = value
    return obj


def test_examples_validate_without_warnings() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 6
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            _, warnings = validate_object(doc)
            assert warnings == [], f"{path.name}: {warnings}"


@pytest.mark.parametrize(
    ("base", "path", "value"),
    [
        (DV, "spec.source.http.checksum", "sha256:" + "ab" * 32),
        (DV, "spec.source.http.extraHeaders", ["X-Auth: 1"]),
        (DV, "spec.contentType", "kubevirt"),
        (DV, "spec.preallocation", True),
        (DV, "spec.storage.volumeMode", "Block"),
        (DV, "spec.storage.resources.requests.storage", 1073741824),
        (DV, "status.phase", "ImportInProgress"),
        (DV, "status.progress", "45.00%"),
        (VM, "spec.template.spec.networks", [{"name": "default", "pod": {}}]),
        (VM, "spec.template.spec.domain.memory", {"guest": "512Mi"}),
        (VM, "status.printableStatus", "WaitingForVolumeBinding"),
    ],
    ids=lambda v: v if isinstance(v, str) and "." in v else None,
)
def test_accepted_without_warning(base: dict[str, Any], path: str, value: Any) -> None:
    _, warnings = validate_object(with_(base, path, value))
    assert warnings == []


@pytest.mark.parametrize(
    ("base", "path", "value"),
    [
        (DV, "spec.priorityClassName", "high"),
        (DV, "spec.source.http.secretExtraHeaders", ["hdr-secret"]),
        (DV, "spec.storage.selector", {"matchLabels": {"a": "b"}}),
        (VM, "spec.template.spec.evictionStrategy", "LiveMigrate"),
        (VM, "spec.template.spec.tolerations", [{"key": "k", "operator": "Exists"}]),
        (VM, "spec.template.spec.domain.firmware", {"bootloader": {"efi": {}}}),
        (VM, "spec.instancetype", {"name": "u1.small"}),
        (VM, "spec.template.spec.domain.devices.disks[0].io", "native"),
    ],
    ids=lambda v: v if isinstance(v, str) and "." in v else None,
)
def test_upstream_only_fields_warn_with_their_path(
    base: dict[str, Any], path: str, value: Any
) -> None:
    _, warnings = validate_object(with_(base, path, value))
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{path}: accepted but not implemented")


@pytest.mark.parametrize(
    ("base", "path", "value", "reason"),
    [
        (DV, "spec.source.http.urll", "x", "unknown field"),
        (DV, "spec.bogus", 1, "unknown field"),
        (DV, "spec.source.http.checksum", "crc32:00", "does not match"),
        (DV, "spec.storage.resources.requests.storage", "lots", "not a quantity"),
        (DV, "spec.contentType", "tarball", "is not one of"),
        (DV, "spec.preallocation", "yes", "expected true or false"),
        (DV, "spec.source.s3", {"url": "s3://b/k"}, "exactly one of"),
        (DV, "status.phase", "Done", "is not one of"),
        (VM, "spec.runStrategy", "Sometimes", "is not one of"),
        (VM, "spec.template.spec.domain.devices.disks[0].disk.bus", "ide", "is not one of"),
        (VM, "spec.template.spec.volumes[0].dataVolume", {"nmae": "d"}, "unknown field"),
        (VM, "spec.template.spec.domain.cpu", {"cores": "two"}, "expected an integer"),
        (VM, "metadata.labelz", {}, "unknown field"),
    ],
)
def test_rejected_with_the_path(base: dict[str, Any], path: str, value: Any, reason: str) -> None:
    with pytest.raises(SchemaError) as info:
        validate_object(with_(base, path, value))
    text = str(info.value)
    assert reason in text
    # The message names the path of the bad field (or of its parent for one-of rules).
    named = path if reason != "exactly one of" else path.rsplit(".", 1)[0]
    assert any(p.startswith(named) for p in info.value.problems), info.value.problems


def test_required_fields_and_unknown_kinds() -> None:
    no_name = with_(DV, "metadata", {})
    with pytest.raises(SchemaError, match=r"metadata\.name: required"):
        validate_object(no_name)
    with pytest.raises(SchemaError, match="not a kind diskplane serves"):
        validate_object({"apiVersion": "v9", "kind": "Gadget", "metadata": {"name": "g"}})
    no_url = with_(DV, "spec.source", {"http": {}})
    with pytest.raises(SchemaError, match=r"spec\.source\.http\.url: required"):
        validate_object(no_url)


def test_several_problems_are_all_reported() -> None:
    bad = with_(with_(DV, "spec.a", 1), "spec.source.http.b", 2)
    with pytest.raises(SchemaError) as info:
        validate_object(bad)
    assert len(info.value.problems) == 2


def test_known_upstream_paths_are_listed() -> None:
    dv_paths = set(upstream_paths(DATAVOLUME.spec))  # type: ignore[arg-type]
    assert {"priorityClassName", "source.gcs", "sourceRef", "storage.selector"} <= dv_paths
    vm_paths = set(upstream_paths(VIRTUALMACHINE.spec))  # type: ignore[arg-type]
    assert "template.spec.domain.devices.disks[].io" in vm_paths
    assert "template.spec.tolerations" in vm_paths
    vmi_paths = set(upstream_paths(VIRTUALMACHINEINSTANCE.spec))  # type: ignore[arg-type]
    # Pod networking is implemented (user-mode NIC), multus is not.
    assert "networks[].multus" in vmi_paths
    assert "networks[].pod" not in vmi_paths


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4Gi", 4 * 2**30), ("512M", 512 * 10**6), ("1e3", 1000), (7, 7), ("1.5Ki", 1536)],
)
def test_parse_quantity(text: str | int, expected: int) -> None:
    assert parse_quantity(text) == expected
