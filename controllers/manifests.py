"""Reading manifests the way ``kubectl apply -f`` does: a file, a directory, or stdin;
YAML or JSON; several documents per file; ``kind: List`` unpacked."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controllers.api.kinds import ResourceKind, validate_object
from controllers.errors import ManifestError, SchemaError

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Manifest:
    """One validated object, where it came from, and its warnings."""

    source: str
    kind: ResourceKind
    object: dict[str, Any]
    warnings: list[str]

    @property
    def name(self) -> str:
        return str(self.object.get("metadata", {}).get("name", ""))


def _documents(source: str, text: str) -> Iterator[tuple[str, Any]]:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source} is not valid YAML or JSON: {exc}") from exc
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        where = f"{source} (document {index + 1})" if len(docs) > 1 else source
        if isinstance(doc, dict) and doc.get("kind") == "List":
            for item_index, item in enumerate(doc.get("items") or []):
                yield f"{where} items[{item_index}]", item
        else:
            yield where, doc


def _read(path: str) -> list[tuple[str, str]]:
    if path == "-":
        return [("<stdin>", sys.stdin.read())]
    target = Path(path)
    if target.is_dir():
        files = sorted(p for p in target.iterdir() if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise ManifestError(f"directory {path} holds no .yaml, .yml or .json files")
    elif target.is_file():
        files = [target]
    else:
        raise ManifestError(f"{path} does not exist")
    try:
        return [(str(f), f.read_text()) for f in files]
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from exc


def load(paths: list[str], namespace: str | None = None) -> list[Manifest]:
    """Read and validate every object in ``paths``; ``SchemaError`` lists every bad path
    of every bad object (nothing is half-applied)."""
    manifests, problems = [], []
    for path in paths:
        for source, text in _read(path):
            for where, doc in _documents(source, text):
                try:
                    kind, warnings = validate_object(doc)
                except SchemaError as exc:
                    problems += [f"{where}: {p}" for p in exc.problems]
                    continue
                obj = dict(doc)
                md = obj.setdefault("metadata", {})
                if kind.namespaced and namespace and not md.get("namespace"):
                    md["namespace"] = namespace
                manifests.append(Manifest(where, kind, obj, warnings))
    if problems:
        raise SchemaError(", ".join(paths), problems)
    return manifests
