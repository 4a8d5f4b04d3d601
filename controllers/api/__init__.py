"""API types: DataVolume, VirtualMachine, VirtualMachineInstance with upstream names.

One schema tree per kind (``controllers.api.kinds``) is the single source of
truth for client-side validation and for the CRDs in ``charts/diskplane/crds/``
(``python -m controllers.crdgen``).
"""

from controllers.api.common import ConditionStatus, now_rfc3339, parse_quantity
from controllers.api.datavolume import (
    ContentType,
    DataVolumeConditionType,
    DataVolumePhase,
    SourceKind,
)
from controllers.api.kinds import (
    ALL_KINDS,
    CUSTOM_KINDS,
    DATAVOLUME,
    EVENT,
    LEASE,
    NAMESPACE,
    PERSISTENTVOLUMECLAIM,
    SECRET,
    VIRTUALMACHINE,
    VIRTUALMACHINEINSTANCE,
    PrinterColumn,
    ResourceKind,
    kind_by_name,
    kind_for,
    object_schema,
    validate_object,
)
from controllers.api.schema import upstream_paths
from controllers.api.virtualmachine import (
    PrintableStatus,
    RunStrategy,
    VMConditionType,
    VMIConditionType,
    VMIPhase,
)

__all__ = [
    "ALL_KINDS",
    "CUSTOM_KINDS",
    "DATAVOLUME",
    "EVENT",
    "LEASE",
    "NAMESPACE",
    "PERSISTENTVOLUMECLAIM",
    "SECRET",
    "VIRTUALMACHINE",
    "VIRTUALMACHINEINSTANCE",
    "ConditionStatus",
    "ContentType",
    "DataVolumeConditionType",
    "DataVolumePhase",
    "PrintableStatus",
    "PrinterColumn",
    "ResourceKind",
    "RunStrategy",
    "SourceKind",
    "VMConditionType",
    "VMIConditionType",
    "VMIPhase",
    "kind_by_name",
    "kind_for",
    "now_rfc3339",
    "object_schema",
    "parse_quantity",
    "upstream_paths",
    "validate_object",
]
