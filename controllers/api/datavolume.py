"""DataVolume (``cdi.kubevirt.io/v1beta1``) with CDI's field names, phases and conditions."""

from __future__ import annotations

from enum import StrEnum

from controllers.api.common import CONDITIONS
from controllers.api.schema import (
    UP,
    UP_BOOL,
    UP_STR,
    UP_STR_LIST,
    Arr,
    Bool,
    Free,
    Int,
    MapOf,
    Obj,
    Quantity,
    Str,
    Upstream,
)


class DataVolumePhase(StrEnum):
    """CDI's ``DataVolumePhase`` values."""

    UNSET = ""
    PENDING = "Pending"
    PVC_BOUND = "PVCBound"
    IMPORT_SCHEDULED = "ImportScheduled"
    IMPORT_IN_PROGRESS = "ImportInProgress"
    CLONE_SCHEDULED = "CloneScheduled"
    CLONE_IN_PROGRESS = "CloneInProgress"
    SNAPSHOT_FOR_SMART_CLONE_IN_PROGRESS = "SnapshotForSmartCloneInProgress"
    CLONE_FROM_SNAPSHOT_SOURCE_IN_PROGRESS = "CloneFromSnapshotSourceInProgress"
    SMART_CLONE_PVC_IN_PROGRESS = "SmartClonePVCInProgress"
    CSI_CLONE_IN_PROGRESS = "CSICloneInProgress"
    EXPANSION_IN_PROGRESS = "ExpansionInProgress"
    NAMESPACE_TRANSFER_IN_PROGRESS = "NamespaceTransferInProgress"
    UPLOAD_SCHEDULED = "UploadScheduled"
    UPLOAD_READY = "UploadReady"
    WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"
    PENDING_POPULATION = "PendingPopulation"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"
    PAUSED = "Paused"
    PREP_CLAIM_IN_PROGRESS = "PrepClaimInProgress"
    REBIND_IN_PROGRESS = "RebindInProgress"


class DataVolumeConditionType(StrEnum):
    READY = "Ready"
    BOUND = "Bound"
    RUNNING = "Running"


class ContentType(StrEnum):
    KUBEVIRT = "kubevirt"
    ARCHIVE = "archive"


class SourceKind(StrEnum):
    """The ``spec.source`` kinds diskplane imports from."""

    HTTP = "http"
    S3 = "s3"
    REGISTRY = "registry"
    UPLOAD = "upload"
    BLANK = "blank"
    PVC = "pvc"


ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
CHECKSUM = Str(
    pattern=r"^(md5|sha1|sha256|sha512):[0-9a-fA-F]+$",
    description="Expected digest of the source bytes, 'sha256:<hex>'; checked while streaming.",
)


def _claim_spec(volume_modes: tuple[str, ...]) -> Obj:
    return Obj(
        {
            "accessModes": Arr(Str(enum=ACCESS_MODES)),
            "resources": Obj(
                {
                    "requests": Obj({"storage": Quantity()}),
                    "limits": Upstream(MapOf(Quantity())),
                    "claims": Upstream(Arr(Free())),
                }
            ),
            "volumeMode": Str(enum=volume_modes),
            "storageClassName": Str(),
            "selector": UP,
            "volumeName": UP_STR,
            "dataSource": UP,
            "dataSourceRef": UP,
            "volumeAttributesClassName": UP_STR,
        }
    )


STORAGE_SPEC = _claim_spec(("Filesystem", "Block", "FromStorageProfile"))
PVC_SPEC = _claim_spec(("Filesystem", "Block"))

_SECRET_REF = Str(description="Secret with accessKeyId/secretKey (basic auth or S3 keys).")
_CERT_CONFIG_MAP = Str(description="ConfigMap holding the CA bundle to trust for this source.")

SOURCE = Obj(
    {
        "http": Obj(
            {
                "url": Str(),
                "secretRef": _SECRET_REF,
                "certConfigMap": _CERT_CONFIG_MAP,
                "extraHeaders": Arr(Str()),
                "secretExtraHeaders": UP_STR_LIST,
                "checksum": CHECKSUM,
                "insecureSkipVerify": Bool(),
            },
            required=("url",),
        ),
        "s3": Obj(
            {
                "url": Str(),
                "secretRef": _SECRET_REF,
                "certConfigMap": _CERT_CONFIG_MAP,
                "checksum": CHECKSUM,
                # diskplane extensions for S3-compatible stores (MinIO, Ceph RGW, moto)
                "endpoint": Str(description="S3 endpoint URL when the url is s3://bucket/key."),
                "region": Str(),
                "insecureSkipVerify": Bool(),
            },
            required=("url",),
        ),
        "registry": Obj(
            {
                "url": Str(),
                "imageStream": UP_STR,
                "pullMethod": Str(enum=("pod", "node")),
                "secretRef": _SECRET_REF,
                "certConfigMap": _CERT_CONFIG_MAP,
                "platform": Obj({"architecture": Str()}),
                "checksum": CHECKSUM,
            },
            required=("url",),
        ),
        "upload": Obj({}),
        "blank": Obj({}),
        "pvc": Obj({"namespace": Str(), "name": Str()}, required=("name",)),
        "snapshot": UP,
        "gcs": UP,
        "imageio": UP,
        "vddk": UP,
    },
    one_of=(
        "http",
        "s3",
        "registry",
        "upload",
        "blank",
        "pvc",
        "snapshot",
        "gcs",
        "imageio",
        "vddk",
    ),
)

DATAVOLUME_SPEC = Obj(
    {
        "source": SOURCE,
        "sourceRef": UP,
        "storage": STORAGE_SPEC,
        "pvc": PVC_SPEC,
        "contentType": Str(enum=tuple(ContentType)),
        "preallocation": Bool(),
        "priorityClassName": UP_STR,
        "serviceAccountName": UP_STR,
        "checkpoints": Upstream(Arr(Free())),
        "finalCheckpoint": UP_BOOL,
    },
    one_of=("storage", "pvc"),
)

DATAVOLUME_STATUS = Obj(
    {
        "phase": Str(enum=tuple(DataVolumePhase)),
        "progress": Str(description="Transfer progress like CDI's '45.00%', or N/A."),
        "restartCount": Int(format="int32"),
        "claimName": Str(),
        "conditions": CONDITIONS,
    }
)
