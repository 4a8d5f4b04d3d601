"""``ImportRequest``, ``SourceSpec`` (a CDI ``spec.source``), ``Credentials``."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cdi.checksum import Checksum
from cdi.errors import InvalidRequest

SourceKind = Literal["http", "s3", "registry", "file", "blank"]
_SECRET_KEYS = ("accessKeyId", "secretKey", "username", "password", "token")


@dataclass(frozen=True)
class Credentials:
    """Already-resolved secrets; ``repr`` never shows them."""

    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    access_key_id: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_mapping(cls, data: Mapping[str, str]) -> Credentials:
        """CDI Secret keys: accessKeyId/secretKey (HTTP basic too), username/password, token."""
        return cls(
            username=data.get("username"),
            password=data.get("password"),
            access_key_id=data.get("accessKeyId"),
            secret_key=data.get("secretKey"),
            token=data.get("token"),
        )

    @classmethod
    def from_secret_file(cls, path: Path) -> Credentials:
        """A Kubernetes Secret (``data`` base64 or ``stringData``) or a flat YAML/JSON map."""
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise InvalidRequest(f"secret file {path} cannot be read as YAML or JSON") from exc
        if not isinstance(doc, dict):
            raise InvalidRequest(f"secret file {path} is not a mapping")
        values: dict[str, str] = {}
        for key in _SECRET_KEYS:
            if key in doc and isinstance(doc[key], str):
                values[key] = doc[key]
        encoded: dict[str, object] = doc["data"] if isinstance(doc.get("data"), dict) else {}
        for key in _SECRET_KEYS:
            if key in encoded:
                try:
                    values[key] = base64.b64decode(str(encoded[key])).decode()
                except (ValueError, UnicodeDecodeError) as exc:
                    raise InvalidRequest(f"secret file {path}: data.{key} is not base64") from exc
        plain: dict[str, object] = (
            doc["stringData"] if isinstance(doc.get("stringData"), dict) else {}
        )
        values.update({k: str(plain[k]) for k in _SECRET_KEYS if k in plain})
        if not values:
            raise InvalidRequest(
                f"secret file {path} has none of the keys {', '.join(_SECRET_KEYS)}"
            )
        return cls.from_mapping(values)

    def basic(self) -> tuple[str, str] | None:
        """HTTP basic auth: username/password, else CDI's accessKeyId/secretKey."""
        if self.username is not None and self.password is not None:
            return self.username, self.password
        if self.access_key_id is not None and self.secret_key is not None:
            return self.access_key_id, self.secret_key
        return None


@dataclass(frozen=True)
class SourceSpec:
    """One source, in the shape of a CDI DataVolume ``spec.source``."""

    kind: SourceKind
    url: str | None = None
    path: Path | None = None
    extra_headers: tuple[tuple[str, str], ...] = ()
    checksum: Checksum | None = None
    insecure_skip_verify: bool = False
    ca_file: Path | None = None
    credentials: Credentials | None = None
    endpoint_url: str | None = None
    region: str | None = None
    platform: str | None = None
    #: Names the source in messages instead of its URL or path (e.g. an upload's
    #: staging file is "upload for volume ns/name").
    display_name: str | None = None

    @classmethod
    def from_cdi(
        cls,
        source: Mapping[str, Any],
        *,
        credentials: Credentials | None = None,
        ca_file: Path | None = None,
    ) -> SourceSpec:
        kinds = [k for k in ("http", "s3", "registry", "blank", "file") if k in source]
        if len(kinds) != 1:
            raise InvalidRequest(
                "source must name exactly one of http, s3, registry, blank, file; "
                f"got {sorted(source)}"
            )
        kind: SourceKind = kinds[0]  # type: ignore[assignment]
        body = source[kind] or {}
        if not isinstance(body, Mapping):
            raise InvalidRequest(f"source.{kind} must be a mapping")
        checksum = Checksum.parse(body["checksum"]) if body.get("checksum") else None
        headers = tuple(split_header(h) for h in body.get("extraHeaders", []) or [])
        platform = body.get("platform") or {}
        spec = cls(
            kind=kind,
            url=body.get("url"),
            path=Path(body["path"]) if body.get("path") else None,
            extra_headers=headers,
            checksum=checksum,
            insecure_skip_verify=bool(body.get("insecureSkipVerify", False)),
            ca_file=ca_file,
            credentials=credentials,
            endpoint_url=body.get("endpoint"),
            region=body.get("region"),
            platform=platform.get("architecture") if isinstance(platform, Mapping) else None,
        )
        spec.validate()
        return spec

    @classmethod
    def from_cli(cls, text: str, **options: Any) -> SourceSpec:
        """A URL (http, https, s3, docker) or a local path."""
        if text.startswith(("http://", "https://")) and not options.get("endpoint_url"):
            kind: SourceKind = "http"
        elif text.startswith(("http://", "https://", "s3://")):
            kind = "s3"
        elif text.startswith("docker://"):
            kind = "registry"
        else:
            spec = cls(kind="file", path=Path(text).expanduser().absolute(), **options)
            spec.validate()
            return spec
        spec = cls(kind=kind, url=text, **options)
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.kind in ("http", "s3", "registry") and not self.url:
            raise InvalidRequest(f"source.{self.kind} needs a url")
        if self.kind == "file" and self.path is None:
            raise InvalidRequest("source.file needs a path")
        if self.kind == "registry" and self.url and not self.url.startswith("docker://"):
            raise InvalidRequest("source.registry url must start with docker://")


def split_header(text: str) -> tuple[str, str]:
    name, sep, value = str(text).partition(":")
    if not sep or not name.strip():
        raise InvalidRequest("an extra header is not of the form 'Name: value'")
    return name.strip(), value.strip()


@dataclass(frozen=True)
class ImportRequest:
    """Import ``source`` into volume ``namespace/name`` of capacity ``size`` bytes."""

    namespace: str
    name: str
    size: int
    source: SourceSpec
    preallocation: bool = False

    @property
    def volume_key(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_quantity(text: str) -> int:
    """Kubernetes quantities: 10Gi, 512Mi, 1G, 1000000 (bytes)."""
    units = {
        "Ki": 1 << 10,
        "Mi": 1 << 20,
        "Gi": 1 << 30,
        "Ti": 1 << 40,
        "k": 10**3,
        "K": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
    }
    value = text.strip()
    for suffix in sorted(units, key=len, reverse=True):
        if value.endswith(suffix):
            number = value[: -len(suffix)]
            try:
                return int(float(number) * units[suffix])
            except ValueError:
                break
    if value.isdigit():
        return int(value)
    raise InvalidRequest(f"size {text!r} is not a quantity like 10Gi, 512Mi or 1000000")
