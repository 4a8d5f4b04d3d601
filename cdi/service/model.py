"""Import jobs as the service keeps them: the request it accepted plus live status."""

from __future__ import annotations

import datetime
import enum
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from cdi.service.errors import RequestInvalid
from cdi.service.schema import IMPORT_REQUEST_SCHEMA, JsonObject, validate

_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)$")
_DIGEST_HEX_LENGTH = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}


class Phase(enum.StrEnum):
    UPLOAD_PENDING = "UploadPending"  # waits for upload bytes; holds no running slot
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED)


def parse_quantity(text: str, field_name: str = "size") -> int:
    """Kubernetes quantity (``10Gi``, ``512M``, ``1073741824``) to bytes."""
    match = _QUANTITY.match(text)
    if match is None or match.group(2) not in _SUFFIXES:
        raise RequestInvalid(field_name, "is not a quantity such as 10Gi")
    value = float(match.group(1)) * _SUFFIXES[match.group(2)]
    if value < 1:
        raise RequestInvalid(field_name, "must be at least one byte")
    return int(value)


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class VolumeRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_json(self) -> JsonObject:
        return {"namespace": self.namespace, "name": self.name}

    @classmethod
    def parse(cls, text: str, field_name: str = "volume") -> VolumeRef:
        """``NS/NAME`` to a reference; names are checked like the API does."""
        namespace, sep, name = text.partition("/")
        if not sep:
            raise RequestInvalid(field_name, "must be NAMESPACE/NAME")
        ref = {"namespace": namespace, "name": name}
        validate(ref, IMPORT_REQUEST_SCHEMA["properties"]["target"], field_name)
        return cls(namespace, name)


@dataclass(frozen=True)
class ImportSpec:
    """A validated import request; what a runner needs to do the work."""

    source: JsonObject
    target: VolumeRef
    size: str
    size_bytes: int
    checksum: str | None = None
    content_type: str = "kubevirt"

    @property
    def source_kind(self) -> str:
        return next(iter(self.source))

    @classmethod
    def from_request(cls, body: Any) -> ImportSpec:
        """Validate a POST /v1/imports body (400 when it is not an object, 422 otherwise)."""
        if not isinstance(body, dict):
            raise RequestInvalid("body", "must be a JSON object", status=400)
        validate(body, IMPORT_REQUEST_SCHEMA)
        checksum = body.get("checksum")
        if checksum is not None:
            algorithm, _, digest = checksum.partition(":")
            if len(digest) != _DIGEST_HEX_LENGTH[algorithm]:
                raise RequestInvalid(
                    "checksum",
                    f"a {algorithm} digest has {_DIGEST_HEX_LENGTH[algorithm]} hex digits",
                )
        target = VolumeRef(body["target"]["namespace"], body["target"]["name"])
        pvc = body["source"].get("pvc")
        if pvc is not None and (pvc["namespace"], pvc["name"]) == (target.namespace, target.name):
            raise RequestInvalid("source.pvc", "cannot clone a volume onto itself")
        if body.get("contentType") == "archive":
            raise RequestInvalid("contentType", "archive imports are not supported yet")
        return cls(
            source=body["source"],
            target=target,
            size=body["size"],
            size_bytes=parse_quantity(body["size"]),
            checksum=checksum.lower() if checksum else None,
            content_type=body.get("contentType", "kubevirt"),
        )

    def to_request(self) -> JsonObject:
        body: JsonObject = {
            "source": self.source,
            "target": self.target.to_json(),
            "size": self.size,
            "contentType": self.content_type,
        }
        if self.checksum:
            body["checksum"] = self.checksum
        return body


@dataclass
class ImportJob:
    """One job: its spec, its status and its bookkeeping (persisted by the store)."""

    id: str
    owner_uid: str
    spec: ImportSpec
    phase: Phase
    created_at: str = field(default_factory=now_iso)
    seq: int = 0  # arrival order, assigned by the store
    stage: str | None = None
    bytes_read: int = 0
    bytes_total: int | None = None
    bytes_written: int = 0
    retries: int = 0
    reason: str | None = None
    message: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    volume_created: bool = False
    queue_position: int | None = None  # computed by the scheduler, never stored

    @staticmethod
    def new_id() -> str:
        return "imp-" + uuid.uuid4().hex[:20]

    @property
    def progress(self) -> str:
        """CDI's string: two decimals, 100 only once the job succeeded."""
        if self.phase is Phase.SUCCEEDED:
            return "100.00%"
        if not self.bytes_total:
            return "N/A" if self.phase is Phase.RUNNING else "0.00%"
        percent = min(self.bytes_read / self.bytes_total * 100.0, 99.99)
        return f"{percent:.2f}%"

    @property
    def progress_ratio(self) -> float:
        if self.phase is Phase.SUCCEEDED:
            return 100.0
        if not self.bytes_total:
            return 0.0
        return min(self.bytes_read / self.bytes_total * 100.0, 99.99)

    def to_json(self) -> JsonObject:
        return {
            "id": self.id,
            "ownerUID": self.owner_uid,
            "source": redacted_source(self.spec.source),
            "target": self.spec.target.to_json(),
            "size": self.spec.size,
            "sizeBytes": self.spec.size_bytes,
            "checksum": self.spec.checksum,
            "contentType": self.spec.content_type,
            "phase": self.phase.value,
            "queuePosition": self.queue_position,
            "stage": self.stage,
            "progress": self.progress,
            "bytesRead": self.bytes_read,
            "bytesTotal": self.bytes_total,
            "bytesWritten": self.bytes_written,
            "retries": self.retries,
            "reason": self.reason,
            "message": self.message,
            "createdAt": self.created_at,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }


def redacted_source(source: JsonObject) -> JsonObject:
    """The source as the API shows it: extra header values (often tokens) hidden."""
    shown: JsonObject = {}
    for kind, body in source.items():
        body = dict(body)
        if "extraHeaders" in body:
            body["extraHeaders"] = [
                f"{str(h).partition(':')[0]}: <redacted>" for h in body["extraHeaders"]
            ]
        shown[kind] = body
    return shown
