"""Error messages name their VMI: :func:`virtnode.errors.name_vmi`."""

from __future__ import annotations

import pytest

from virtnode import QmpCommandError, SpecError, VirtnodeError
from virtnode.errors import name_vmi


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(SpecError("bus 'x' is bad"), "VMI ns/vm: bus 'x' is bad", id="prefixed"),
        pytest.param(SpecError("VM ns/vm is Failed"), "VM ns/vm is Failed", id="already-named"),
    ],
)
def test_name_vmi_prefixes_once(error: VirtnodeError, expected: str) -> None:
    assert str(name_vmi(error, "ns/vm")) == expected
    assert str(name_vmi(error, "ns/vm")) == expected


def test_name_vmi_keeps_type_and_fields() -> None:
    error = QmpCommandError("QEMU refused 'x'", "GenericError")
    named = name_vmi(error, "ns/vm")
    assert named is error
    assert named.error_class == "GenericError"
    assert str(named) == "VMI ns/vm: QEMU refused 'x'"
