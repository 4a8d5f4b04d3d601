"""Each package's public surface is what its ``__all__`` says, and nothing is missing."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["cdi", "containerdisk", "virtnode", "controllers"])
def test_all_names_exist(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.__all__ names {name!r} which does not exist"
