"""The resource kinds diskplane stores: its CRDs plus the built-in kinds it uses.

A :class:`ResourceKind` says where a kind lives (group, version, plural), how
kubectl-like commands name it (short names), what its spec and status look
like (``None`` for built-in kinds, whose schema is the apiserver's business)
and which printer columns ``get`` shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controllers.api.common import OBJECT_META
from controllers.api.datavolume import DATAVOLUME_SPEC, DATAVOLUME_STATUS
from controllers.api.schema import Node, Obj, Report, Str
from controllers.api.virtualmachine import VM_SPEC, VM_STATUS, VMI_SPEC, VMI_STATUS
from controllers.errors import SchemaError


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class ResourceKind:
    group: str
    version: str
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...] = ()
    namespaced: bool = True
    spec: Node | None = None
    status: Node | None = None
    columns: tuple[PrinterColumn, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def is_custom(self) -> bool:
        """A kind diskplane defines (and ships a CRD for)."""
        return self.spec is not None

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")

DATAVOLUME = ResourceKind(
    group="cdi.kubevirt.io",
    version="v1beta1",
    kind="DataVolume",
    plural="datavolumes",
    singular="datavolume",
    short_names=("dv", "dvs"),
    spec=DATAVOLUME_SPEC,
    status=DATAVOLUME_STATUS,
    columns=(
        PrinterColumn("Phase", ".status.phase", description="The phase the data volume is in"),
        PrinterColumn(
            "Progress",
            ".status.progress",
            description="Transfer progress in percentage if known, N/A otherwise",
        ),
        PrinterColumn(
            "Restarts",
            ".status.restartCount",
            "integer",
            description="The number of times the transfer has been restarted.",
        ),
        AGE,
    ),
    categories=("all",),
)

VIRTUALMACHINE = ResourceKind(
    group="kubevirt.io",
    version="v1",
    kind="VirtualMachine",
    plural="virtualmachines",
    singular="virtualmachine",
    short_names=("vm", "vms"),
    spec=VM_SPEC,
    status=VM_STATUS,
    columns=(
        AGE,
        PrinterColumn("Status", ".status.printableStatus", description="Human Readable Status"),
        PrinterColumn("Ready", ".status.conditions[?(@.type=='Ready')].status"),
    ),
    categories=("all",),
)

VIRTUALMACHINEINSTANCE = ResourceKind(
    group="kubevirt.io",
    version="v1",
    kind="VirtualMachineInstance",
    plural="virtualmachineinstances",
    singular="virtualmachineinstance",
    short_names=("vmi", "vmis"),
    spec=VMI_SPEC,
    status=VMI_STATUS,
    columns=(
        AGE,
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("IP", ".status.interfaces[0].ipAddress"),
        PrinterColumn("NodeName", ".status.nodeName"),
        PrinterColumn("Ready", ".status.conditions[?(@.type=='Ready')].status"),
        PrinterColumn(
            "Live-Migratable",
            ".status.conditions[?(@.type=='LiveMigratable')].status",
            priority=1,
        ),
        PrinterColumn("Paused", ".status.conditions[?(@.type=='Paused')].status", priority=1),
    ),
    categories=("all",),
)

# Built-in kinds the controllers read and write; their schema is the apiserver's.
PERSISTENTVOLUMECLAIM = ResourceKind(
    "", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", ("pvc",)
)
EVENT = ResourceKind("", "v1", "Event", "events", "event", ("ev",))
LEASE = ResourceKind("coordination.k8s.io", "v1", "Lease", "leases", "lease")
NAMESPACE = ResourceKind("", "v1", "Namespace", "namespaces", "namespace", ("ns",), False)
SECRET = ResourceKind("", "v1", "Secret", "secrets", "secret")

CUSTOM_KINDS: tuple[ResourceKind, ...] = (DATAVOLUME, VIRTUALMACHINE, VIRTUALMACHINEINSTANCE)
ALL_KINDS: tuple[ResourceKind, ...] = (
    *CUSTOM_KINDS,
    PERSISTENTVOLUMECLAIM,
    EVENT,
    LEASE,
    NAMESPACE,
)


def kind_for(api_version: str, kind: str) -> ResourceKind:
    """The kind an object's ``apiVersion``/``kind`` names; ``SchemaError`` if none."""
    for candidate in ALL_KINDS:
        if candidate.kind == kind and candidate.api_version == api_version:
            return candidate
    known = ", ".join(f"{k.api_version} {k.kind}" for k in ALL_KINDS)
    raise SchemaError(
        f"{kind or '<no kind>'} ({api_version or '<no apiVersion>'})",
        [f"apiVersion/kind: not a kind diskplane serves; it knows {known}"],
    )


def kind_by_name(name: str) -> ResourceKind:
    """Resolve a kubectl-style name: ``dv``, ``datavolume``, ``datavolumes``, ``DataVolume``,
    ``datavolumes.cdi.kubevirt.io``."""
    lowered = name.lower()
    for candidate in ALL_KINDS:
        names = {candidate.plural, candidate.singular, candidate.kind.lower(), str(candidate)}
        if lowered in names or lowered in candidate.short_names:
            return candidate
    raise KeyError(name)


def object_schema(kind: ResourceKind) -> Obj:
    """The whole-object schema of a custom kind, for client-side validation."""
    props: dict[str, Node] = {
        "apiVersion": Str(enum=(kind.api_version,)),
        "kind": Str(enum=(kind.kind,)),
        "metadata": OBJECT_META,
    }
    if kind.spec is not None:
        props["spec"] = kind.spec
    if kind.status is not None:
        props["status"] = kind.status
    return Obj(props, required=("apiVersion", "kind", "metadata", "spec"))


def validate_object(obj: Mapping[str, Any]) -> tuple[ResourceKind, list[str]]:
    """Check one object; return its kind and the warnings (upstream-only fields used).

    Raises ``SchemaError`` naming every bad path. Built-in kinds are not checked.
    """
    if not isinstance(obj, Mapping):
        raise SchemaError("document", ["<root>: expected an object (a YAML mapping)"])
    kind = kind_for(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
    if not kind.is_custom:
        return kind, []
    report = Report()
    object_schema(kind).check(dict(obj), "", report)
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    name = meta.get("name")
    if not name and not meta.get("generateName"):
        report.problem("metadata.name", "required field is missing")
    if report.problems:
        raise SchemaError(f"{kind.kind} {name or '<unnamed>'}", report.problems)
    return kind, report.warnings
