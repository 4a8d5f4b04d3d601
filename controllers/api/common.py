"""Pieces shared by every resource: object metadata, conditions, quantities, timestamps."""

from __future__ import annotations

import datetime
import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from enum import StrEnum

from controllers.api.schema import Arr, Bool, Free, Int, MapOf, Obj, Str

TIME = Str(format="date-time")


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


OWNER_REFERENCE = Obj(
    {
        "apiVersion": Str(),
        "kind": Str(),
        "name": Str(),
        "uid": Str(),
        "controller": Bool(),
        "blockOwnerDeletion": Bool(),
    },
    required=("apiVersion", "kind", "name", "uid"),
)

# metav1.ObjectMeta as a client may send it. The CRD itself leaves metadata to the
# apiserver (``type: object``), so this node only serves client-side validation.
OBJECT_META = Obj(
    {
        "name": Str(),
        "generateName": Str(),
        "namespace": Str(),
        "labels": MapOf(Str()),
        "annotations": MapOf(Str()),
        "uid": Str(),
        "resourceVersion": Str(),
        "generation": Int(),
        "creationTimestamp": Str(),
        "deletionTimestamp": Str(),
        "deletionGracePeriodSeconds": Int(),
        "finalizers": Arr(Str()),
        "ownerReferences": Arr(OWNER_REFERENCE),
        "managedFields": Arr(Free()),
        "selfLink": Str(),
        "clusterName": Str(),
    }
)

CONDITION = Obj(
    {
        "type": Str(),
        "status": Str(enum=tuple(ConditionStatus)),
        "lastTransitionTime": TIME,
        "lastHeartbeatTime": TIME,
        "lastProbeTime": TIME,
        "reason": Str(),
        "message": Str(),
    },
    required=("type", "status"),
)
CONDITIONS = Arr(CONDITION)

_SUFFIXES: dict[str, Decimal | int] = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}


_QUANTITY_SPLIT = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([eE][+-]?[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?$"
)


def parse_quantity(value: int | str) -> int:
    """A Kubernetes quantity as a whole number, rounded up (``"4Gi"`` -> 4294967296)."""
    if isinstance(value, int):
        return value
    match = _QUANTITY_SPLIT.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a quantity such as 4Gi")
    number, exponent, suffix = match.groups()
    try:
        amount = Decimal(number)
        if exponent:
            amount *= Decimal(10) ** int(exponent[1:])
        amount *= Decimal(_SUFFIXES[suffix or ""])
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"{value!r} is not a quantity such as 4Gi") from exc
    return int(amount.to_integral_value(rounding=ROUND_CEILING))


def now_rfc3339() -> str:
    """The current time as metav1.Time renders it (seconds, UTC, ``Z``)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """The current time as metav1.MicroTime renders it (Lease renewTime)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime.datetime:
    """Parse metav1.Time or MicroTime."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
