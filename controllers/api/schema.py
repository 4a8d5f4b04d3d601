"""A small schema language: one tree per resource serves validation and CRD generation.

Nodes describe what a field holds. :func:`validate` walks an incoming object
against a node: fields in the schema are type-checked; fields wrapped in
:class:`Upstream` exist in the upstream (CDI/KubeVirt) schema but diskplane does
not implement them, so they are accepted with a warning naming their path;
anything else is rejected with a problem naming its path. :meth:`Node.openapi`
renders the same tree as a structural OpenAPI v3 schema for a CRD.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

# Kubernetes resource.Quantity, as the apiserver's own pattern has it.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)


@dataclass
class Report:
    """What one validation found: problems reject the object, warnings do not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def problem(self, path: str, reason: str) -> None:
        self.problems.append(f"{path or '<root>'}: {reason}")


class Node:
    """Base of every schema node."""

    description: str = ""

    def check(self, value: Any, path: str, report: Report) -> None:
        raise NotImplementedError

    def openapi(self) -> JSON:
        raise NotImplementedError

    def _described(self, schema: JSON) -> JSON:
        if self.description:
            schema["description"] = self.description
        return schema


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null" if value is None else type(value).__name__


@dataclass(frozen=True)
class Str(Node):
    enum: tuple[str, ...] = ()
    pattern: str = ""
    format: str = ""
    description: str = ""

    def check(self, value: Any, path: str, report: Report) -> None:
        if not isinstance(value, str):
            report.problem(path, f"expected a string, got {_type_name(value)}")
        elif self.enum and value not in self.enum:
            report.problem(path, f"{value!r} is not one of {', '.join(self.enum)}")
        elif self.pattern and not re.search(self.pattern, value):
            report.problem(path, f"{value!r} does not match {self.pattern}")

    def openapi(self) -> JSON:
        schema: JSON = {"type": "string"}
        if self.enum:
            schema["enum"] = [str(e) for e in self.enum]
        if self.pattern:
            schema["pattern"] = self.pattern
        if self.format:
            schema["format"] = self.format
        return self._described(schema)


@dataclass(frozen=True)
class Int(Node):
    minimum: int | None = None
    format: str = ""
    description: str = ""

    def check(self, value: Any, path: str, report: Report) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            report.problem(path, f"expected an integer, got {_type_name(value)}")
        elif self.minimum is not None and value < self.minimum:
            report.problem(path, f"{value} is below the minimum {self.minimum}")

    def openapi(self) -> JSON:
        schema: JSON = {"type": "integer"}
        if self.format:
            schema["format"] = self.format
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        return self._described(schema)


@dataclass(frozen=True)
class Bool(Node):
    description: str = ""

    def check(self, value: Any, path: str, report: Report) -> None:
        if not isinstance(value, bool):
            report.problem(path, f"expected true or false, got {_type_name(value)}")

    def openapi(self) -> JSON:
        return self._described({"type": "boolean"})


@dataclass(frozen=True)
class Quantity(Node):
    """A Kubernetes quantity (``4Gi``, ``512M``, ``1073741824``)."""

    description: str = ""

    def check(self, value: Any, path: str, report: Report) -> None:
        if isinstance(value, bool) or not isinstance(value, int | str):
            report.problem(path, f"expected a quantity such as 4Gi, got {_type_name(value)}")
        elif isinstance(value, str) and not _QUANTITY_RE.match(value):
            report.problem(path, f"{value!r} is not a quantity such as 4Gi or 512Mi")

    def openapi(self) -> JSON:
        return self._described(
            {
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "pattern": QUANTITY_PATTERN,
                "x-kubernetes-int-or-string": True,
            }
        )


@dataclass(frozen=True)
class IntOrStr(Node):
    description: str = ""

    def check(self, value: Any, path: str, report: Report) -> None:
        if isinstance(value, bool) or not isinstance(value, int | str):
            report.problem(path, f"expected an integer or a string, got {_type_name(value)}")

    def openapi(self) -> JSON:
        return self._described(
            {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
        )


@dataclass(frozen=True)
class Free(Node):
    """An object whose content is not checked (embedded metadata, opaque upstream blocks)."""

    description: str = ""

    def check(self, value: Any, path: str, report: Report) -> None:
        if not isinstance(value, dict):
            report.problem(path, f"expected an object, got {_type_name(value)}")

    def openapi(self) -> JSON:
        return self._described({"type": "object", "x-kubernetes-preserve-unknown-fields": True})


@dataclass(frozen=True)
class Arr(Node):
    items: Node
    description: str = ""

    def check(self, value: Any, path: str, report: Report) -> None:
        if not isinstance(value, list):
            report.problem(path, f"expected a list, got {_type_name(value)}")
            return
        for index, item in enumerate(value):
            self.items.check(item, f"{path}[{index}]", report)

    def openapi(self) -> JSON:
        return self._described({"type": "array", "items": self.items.openapi()})


@dataclass(frozen=True)
class MapOf(Node):
    """An object with free keys and typed values (labels, resource lists)."""

    values: Node
    description: str = ""

    def check(self, value: Any, path: str, report: Report) -> None:
        if not isinstance(value, dict):
            report.problem(path, f"expected an object, got {_type_name(value)}")
            return
        for key, item in value.items():
            self.values.check(item, f"{path}.{key}", report)

    def openapi(self) -> JSON:
        return self._described({"type": "object", "additionalProperties": self.values.openapi()})


@dataclass(frozen=True)
class Obj(Node):
    """An object with known fields.

    ``required`` fields must be present; ``one_of`` names fields of which exactly
    one must be set (a DataVolume source, a volume source).
    """

    props: Mapping[str, Node]
    required: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()
    description: str = ""

    def check(self, value: Any, path: str, report: Report) -> None:
        if not isinstance(value, dict):
            report.problem(path, f"expected an object, got {_type_name(value)}")
            return
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            node = self.props.get(key)
            if node is None:
                report.problem(sub, "unknown field: neither diskplane nor upstream defines it")
            else:
                node.check(item, sub, report)
        for key in self.required:
            if key not in value:
                report.problem(f"{path}.{key}" if path else key, "required field is missing")
        if self.one_of:
            chosen = [k for k in self.one_of if value.get(k) is not None]
            if len(chosen) != 1:
                found = ", ".join(chosen) or "none"
                report.problem(
                    path, f"exactly one of {', '.join(self.one_of)} must be set (found: {found})"
                )

    def openapi(self) -> JSON:
        schema: JSON = {
            "type": "object",
            "properties": {k: v.openapi() for k, v in sorted(self.props.items())},
        }
        if self.required:
            schema["required"] = sorted(self.required)
        return self._described(schema)


@dataclass(frozen=True)
class Upstream(Node):
    """A field upstream defines and diskplane accepts but does not implement (yet)."""

    inner: Node = field(default_factory=Free)
    description: str = ""

    def check(self, value: Any, path: str, report: Report) -> None:
        # Type-check only the shape upstream gives it; its content is not ours.
        before = len(report.problems)
        probe = Report()
        self.inner.check(value, path, probe)
        report.problems.extend(probe.problems)
        if len(report.problems) == before:
            report.warnings.append(
                f"{path}: accepted but not implemented by diskplane; it has no effect"
            )

    def openapi(self) -> JSON:
        return self.inner.openapi()


def upstream_paths(node: Node, prefix: str = "") -> Iterator[str]:
    """Every path in ``node`` that is accepted but not implemented (``[]`` marks lists)."""
    if isinstance(node, Upstream):
        yield prefix
    elif isinstance(node, Obj):
        for key, sub in sorted(node.props.items()):
            yield from upstream_paths(sub, f"{prefix}.{key}" if prefix else key)
    elif isinstance(node, Arr):
        yield from upstream_paths(node.items, f"{prefix}[]")
    elif isinstance(node, MapOf):
        yield from upstream_paths(node.values, f"{prefix}.*")


def validate(node: Node, value: Any, path: str = "") -> Report:
    """Check ``value`` against ``node``; the report lists problems and warnings by path."""
    report = Report()
    node.check(value, path, report)
    return report


# Shorthands for the resource definitions.
UP = Upstream()
UP_STR = Upstream(Str())
UP_BOOL = Upstream(Bool())
UP_INT = Upstream(Int())
UP_LIST = Upstream(Arr(Free()))
UP_STR_LIST = Upstream(Arr(Str()))
