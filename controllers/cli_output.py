"""How ``get`` and ``describe`` print objects: kubectl's tables, YAML/JSON, describe pages."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Sequence
from typing import Any

import yaml

from controllers.api.common import parse_time
from controllers.api.kinds import PrinterColumn, ResourceKind

_FILTER = re.compile(r"^\[\?\(@\.(\w+)==['\"]([^'\"]*)['\"]\)\]")
_INDEX = re.compile(r"^\[(\d+)\]")
_FIELD = re.compile(r"^\.([\w-]+)")


def json_path(obj: Any, path: str) -> Any:
    """The subset of JSONPath printer columns use: ``.a.b``, ``[0]``, ``[?(@.k=='v')]``."""
    rest, current = path, obj
    while rest and current is not None:
        if m := _FIELD.match(rest):
            current = current.get(m.group(1)) if isinstance(current, dict) else None
        elif m := _INDEX.match(rest):
            index = int(m.group(1))
            current = current[index] if isinstance(current, list) and index < len(current) else None
        elif m := _FILTER.match(rest):
            key, value = m.groups()
            matches = [i for i in current or [] if isinstance(i, dict) and i.get(key) == value]
            current = matches[0] if matches else None
        else:
            raise ValueError(f"unsupported JSONPath {path!r}")
        rest = rest[m.end() :]
    return current


def age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    """kubectl's short age: ``42s``, ``5m``, ``3h``, ``2d``."""
    if not timestamp:
        return "<unknown>"
    moment = now or datetime.datetime.now(datetime.UTC)
    seconds = max(0, int((moment - parse_time(timestamp)).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "d" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _cell(obj: Any, column: PrinterColumn) -> str:
    value = json_path(obj, column.json_path)
    if column.type == "date":
        return age(value)
    return "<none>" if value is None or value == "" else str(value)


def columns_for(kind: ResourceKind, wide: bool) -> list[PrinterColumn]:
    if not kind.columns:
        return [PrinterColumn("Age", ".metadata.creationTimestamp", "date")]
    return [c for c in kind.columns if wide or c.priority == 0]


def table(
    kind: ResourceKind, objects: Sequence[Any], wide: bool, namespaces: bool, header: bool = True
) -> str:
    cols = columns_for(kind, wide)
    rows = []
    if header:
        rows.append(
            (["NAMESPACE"] if namespaces else []) + ["NAME"] + [c.name.upper() for c in cols]
        )
    for obj in objects:
        md = obj.get("metadata", {})
        rows.append(
            ([md.get("namespace", "")] if namespaces else [])
            + [md.get("name", "")]
            + [_cell(obj, c) for c in cols]
        )
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    if not header:  # watch rows: keep a stable, generous width
        widths = [max(w, 16) for w in widths]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def dump(objects: list[Any], fmt: str, single: bool) -> str:
    payload: Any = (
        objects[0]
        if single
        else {"apiVersion": "v1", "kind": "List", "items": objects, "metadata": {}}
    )
    if fmt == "json":
        return json.dumps(payload, indent=4)
    return yaml.safe_dump(payload, sort_keys=False).rstrip("\n")


def describe(obj: dict[str, Any], events: Sequence[dict[str, Any]]) -> str:
    md = obj.get("metadata", {})
    lines = [
        f"Name:         {md.get('name', '')}",
        f"Namespace:    {md.get('namespace', '')}",
        f"Labels:       {_pairs(md.get('labels'))}",
        f"Annotations:  {_pairs(md.get('annotations'))}",
        f"API Version:  {obj.get('apiVersion', '')}",
        f"Kind:         {obj.get('kind', '')}",
        f"Created:      {md.get('creationTimestamp', '')}",
    ]
    if md.get("deletionTimestamp"):
        lines.append(f"Deleting:     since {md['deletionTimestamp']}")
    if md.get("finalizers"):
        lines.append(f"Finalizers:   {', '.join(md['finalizers'])}")
    for section in ("spec", "status"):
        if obj.get(section):
            body = dict(obj[section])
            body.pop("conditions", None)
            text = yaml.safe_dump(body, sort_keys=False).rstrip("\n")
            lines += [f"{section.capitalize()}:", _indent(text)]
    conditions = (obj.get("status") or {}).get("conditions") or []
    if conditions:
        lines.append("Conditions:")
        lines.append("  Type         Status   Reason                  Message")
        for c in conditions:
            lines.append(
                f"  {c.get('type', ''):<12} {c.get('status', ''):<8} "
                f"{c.get('reason', ''):<23} {c.get('message', '')}".rstrip()
            )
    lines.append("Events:" + ("  <none>" if not events else ""))
    for e in events:
        when = e.get("lastTimestamp") or e.get("eventTime") or ""
        lines.append(
            f"  {e.get('type', ''):<8} {e.get('reason', ''):<20} {age(when) if when else '':<6} "
            f"{e.get('message', '')}"
        )
    return "\n".join(lines)


def _pairs(mapping: dict[str, str] | None) -> str:
    if not mapping:
        return "<none>"
    return "\n              ".join(f"{k}={v}" for k, v in sorted(mapping.items()))


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
