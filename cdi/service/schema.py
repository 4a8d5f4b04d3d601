"""JSON schemas of the jobs API and the validator that enforces them.

The schemas here are the single source of truth: the request validator
walks them and the OpenAPI document (:mod:`cdi.service.openapi`) embeds
them, so the two cannot drift.
"""

from __future__ import annotations

import re
from typing import Any

from cdi.service.errors import RequestInvalid

JsonObject = dict[str, Any]

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E)?$"
CHECKSUM = r"^(sha256|sha512|sha1|md5):[0-9a-fA-F]+$"


def _string(**extra: Any) -> JsonObject:
    return {"type": "string", **extra}


def _obj(props: JsonObject, required: tuple[str, ...] = (), **extra: Any) -> JsonObject:
    return {
        "type": "object",
        "properties": props,
        "required": list(required),
        "additionalProperties": False,
        **extra,
    }


_SECRET_REF = _string(description="name of a secret holding credentials, resolved by the runner")
_BOOL = {"type": "boolean"}
_CERT_REF = _string(description="name of a config map holding a CA bundle")

SOURCE_SCHEMA: JsonObject = _obj(
    {
        "http": _obj(
            {
                "url": _string(pattern=r"^https?://", maxLength=8192),
                "secretRef": _SECRET_REF,
                "certConfigMap": _CERT_REF,
                "extraHeaders": {"type": "array", "items": _string(maxLength=8192)},
                "secretExtraHeaders": {"type": "array", "items": _string()},
                "insecureSkipVerify": _BOOL,
            },
            ("url",),
        ),
        "s3": _obj(
            {
                "url": _string(pattern=r"^(https?|s3)://"),
                "secretRef": _SECRET_REF,
                "certConfigMap": _CERT_REF,
                "endpoint": _string(pattern=r"^https?://", description="S3-compatible endpoint"),
                "region": _string(),
                "insecureSkipVerify": _BOOL,
            },
            ("url",),
        ),
        "registry": _obj(
            {
                "url": _string(pattern=r"^(docker|oci-archive)://"),
                "secretRef": _SECRET_REF,
                "certConfigMap": _CERT_REF,
                "pullMethod": _string(enum=["pod", "node"]),
                "insecureSkipVerify": _BOOL,
                "platform": _obj({"architecture": _string()}),
            },
            ("url",),
        ),
        "blank": _obj({}),
        "upload": _obj({}),
        "pvc": _obj(
            {"namespace": _string(pattern=DNS1123_LABEL), "name": _string(pattern=DNS1123_LABEL)},
            ("namespace", "name"),
        ),
    },
    minProperties=1,
    maxProperties=1,
    description="exactly one source, in the shape of a DataVolume's spec.source",
)

TARGET_SCHEMA: JsonObject = _obj(
    {
        "namespace": _string(pattern=DNS1123_LABEL, maxLength=63),
        "name": _string(pattern=DNS1123_LABEL, maxLength=63),
    },
    ("namespace", "name"),
)

IMPORT_REQUEST_SCHEMA: JsonObject = _obj(
    {
        "source": SOURCE_SCHEMA,
        "target": TARGET_SCHEMA,
        "size": _string(pattern=QUANTITY, description="volume capacity, e.g. 10Gi"),
        "checksum": _string(pattern=CHECKSUM, description="e.g. sha256:<hex>"),
        "contentType": _string(enum=["kubevirt", "archive"]),
        "ownerUID": _string(maxLength=128, description="label of the progress metric"),
    },
    ("source", "target", "size"),
)

_NULLABLE_INT = {"type": ["integer", "null"]}
_NULLABLE_STR = {"type": ["string", "null"]}

IMPORT_JOB_SCHEMA: JsonObject = _obj(
    {
        "id": _string(),
        "ownerUID": _string(),
        "source": SOURCE_SCHEMA,
        "target": TARGET_SCHEMA,
        "size": _string(),
        "sizeBytes": {"type": "integer"},
        "checksum": _NULLABLE_STR,
        "contentType": _string(),
        "phase": _string(
            enum=["UploadPending", "Queued", "Running", "Succeeded", "Failed", "Cancelled"]
        ),
        "queuePosition": _NULLABLE_INT,
        "stage": _NULLABLE_STR,
        "progress": _string(description='CDI form, e.g. "45.00%" or "N/A"'),
        "bytesRead": {"type": "integer"},
        "bytesTotal": _NULLABLE_INT,
        "bytesWritten": {"type": "integer"},
        "retries": {"type": "integer"},
        "reason": _NULLABLE_STR,
        "message": _NULLABLE_STR,
        "createdAt": _string(),
        "startedAt": _NULLABLE_STR,
        "finishedAt": _NULLABLE_STR,
    },
    (
        "id",
        "ownerUID",
        "source",
        "target",
        "size",
        "sizeBytes",
        "checksum",
        "contentType",
        "phase",
        "queuePosition",
        "stage",
        "progress",
        "bytesRead",
        "bytesTotal",
        "bytesWritten",
        "retries",
        "reason",
        "message",
        "createdAt",
        "startedAt",
        "finishedAt",
    ),
)

JOB_LIST_SCHEMA: JsonObject = _obj(
    {"items": {"type": "array", "items": {"$ref": "#/components/schemas/ImportJob"}}},
    ("items",),
)

UPLOAD_TOKEN_REQUEST_SCHEMA: JsonObject = _obj(
    {
        "target": TARGET_SCHEMA,
        "ttlSeconds": {"type": "integer", "minimum": 1},
    },
    ("target",),
)

UPLOAD_TOKEN_SCHEMA: JsonObject = _obj(
    {"token": _string(), "expiresAt": _string(), "target": TARGET_SCHEMA},
    ("token", "expiresAt", "target"),
)

UPLOAD_STATUS_SCHEMA: JsonObject = _obj(
    {
        "jobId": _string(),
        "bytesReceived": {"type": "integer"},
        "totalBytes": _NULLABLE_INT,
        "complete": {"type": "boolean"},
        "receiving": {"type": "boolean"},
        "phase": _string(),
    },
    ("jobId", "bytesReceived", "totalBytes", "complete", "receiving", "phase"),
)

ERROR_SCHEMA: JsonObject = _obj(
    {"error": _string(), "field": _NULLABLE_STR},
    ("error", "field"),
)

SCHEMAS: dict[str, JsonObject] = {
    "ImportRequest": IMPORT_REQUEST_SCHEMA,
    "ImportJob": IMPORT_JOB_SCHEMA,
    "ImportJobList": JOB_LIST_SCHEMA,
    "UploadTokenRequest": UPLOAD_TOKEN_REQUEST_SCHEMA,
    "UploadToken": UPLOAD_TOKEN_SCHEMA,
    "UploadStatus": UPLOAD_STATUS_SCHEMA,
    "Error": ERROR_SCHEMA,
}

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}


def validate(value: Any, schema: JsonObject, path: str = "") -> None:
    """Raise :class:`RequestInvalid` (422) naming the first field that breaks ``schema``."""
    where = path or "body"
    _check_type(value, schema, where)
    if isinstance(value, dict):
        _check_object(value, schema, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            validate(item, schema.get("items", {}), f"{where}[{index}]")
    elif isinstance(value, str):
        _check_string(value, schema, where)
    elif isinstance(value, int) and "minimum" in schema and value < schema["minimum"]:
        raise RequestInvalid(where, f"must be at least {schema['minimum']}")


def _check_type(value: Any, schema: JsonObject, where: str) -> None:
    wanted = schema.get("type")
    if wanted is None:
        return
    names = wanted if isinstance(wanted, list) else [wanted]
    for name in names:
        # bool is an int in Python; JSON keeps them apart.
        if isinstance(value, _TYPES[name]) and not (name == "integer" and isinstance(value, bool)):
            return
    raise RequestInvalid(where, f"must be of type {' or '.join(names)}")


def _check_object(value: JsonObject, schema: JsonObject, path: str) -> None:
    props: JsonObject = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            raise RequestInvalid(_join(path, name), "is required")
    if schema.get("additionalProperties") is False:
        for name in value:
            if name not in props:
                raise RequestInvalid(_join(path, name), "is not a known field")
    count = len(value)
    if count < schema.get("minProperties", 0) or count > schema.get("maxProperties", count):
        raise RequestInvalid(path or "body", "must name exactly one of " + ", ".join(props))
    for name, item in value.items():
        if name in props:
            validate(item, props[name], _join(path, name))


def _check_string(value: str, schema: JsonObject, where: str) -> None:
    if "enum" in schema and value not in schema["enum"]:
        raise RequestInvalid(where, "must be one of " + ", ".join(schema["enum"]))
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise RequestInvalid(where, f"must be at most {schema['maxLength']} characters")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        raise RequestInvalid(where, f"does not match the pattern {schema['pattern']}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
