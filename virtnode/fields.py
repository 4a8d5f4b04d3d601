"""Checked access to the shapes of a user-supplied VMI document (spec.py, network.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from virtnode.errors import SpecError


def as_mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(f"{what} must be an object")
    return value


def as_list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise SpecError(f"{what} must be a list")
    return value
