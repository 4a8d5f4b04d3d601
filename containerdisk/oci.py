"""OCI objects: descriptors, image manifests, indexes, configs and digests.

Docker schema 2 manifests and manifest lists parse into the same objects
(their JSON has the same shape); we always write OCI.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from containerdisk import mediatypes as mt
from containerdisk.errors import DigestMismatch, ManifestError

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # distribution's own limit


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Compact, key-sorted JSON: the same object always has the same digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class StreamDigest:
    """A digest computed while bytes stream past, with the byte count."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def verify(self, expected: str, what: str, expected_size: int | None = None) -> None:
        """Raise :class:`DigestMismatch` unless the bytes seen are ``expected``."""
        if expected_size is not None and self.size != expected_size:
            raise DigestMismatch(
                f"{what} is {self.size} bytes but its descriptor says {expected_size};"
                " the content was discarded"
            )
        if not expected.startswith("sha256:"):
            raise ManifestError(
                f"{what} names digest algorithm {expected.split(':')[0]!r};"
                " only sha256 is supported"
            )
        if self.digest != expected:
            raise DigestMismatch(
                f"{what} has digest {self.digest}, expected {expected}; the content was discarded"
            )


def verify_bytes(data: bytes, expected: str, what: str) -> None:
    d = StreamDigest()
    d.update(data)
    d.verify(expected, what)


@dataclass(frozen=True, slots=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]``, e.g. ``linux/arm64/v8``."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ManifestError(f"platform {text!r} is not os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def host(cls) -> Platform:
        machine = _platform.machine().lower()
        arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)
        return cls("linux", arch)

    def matches(self, other: Platform) -> bool:
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return self.variant is None or other.variant is None or self.variant == other.variant

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    artifact_type: str | None = None

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Descriptor:
        try:
            plat = obj.get("platform")
            return cls(
                media_type=str(obj["mediaType"]),
                digest=_checked_digest(obj["digest"], what),
                size=_checked_size(obj["size"], what),
                annotations={str(k): str(v) for k, v in (obj.get("annotations") or {}).items()},
                platform=Platform(plat["os"], plat["architecture"], plat.get("variant"))
                if plat
                else None,
                artifact_type=obj.get("artifactType"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ManifestError(f"{what} has a malformed descriptor ({exc!s:.80})") from exc

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.platform:
            out["platform"] = self.platform.to_json()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


EMPTY_CONFIG = Descriptor(mt.OCI_EMPTY, sha256_digest(mt.EMPTY_CONFIG_BYTES), 2)


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest (OCI or Docker schema 2)."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = mt.OCI_MANIFEST
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out["config"] = self.config.to_json()
        out["layers"] = [d.to_json() for d in self.layers]
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def encode(self) -> bytes:
        return canonical_json(self.to_json())


@dataclass(frozen=True, slots=True)
class Index:
    """An image index (OCI) or manifest list (Docker)."""

    manifests: tuple[Descriptor, ...]
    media_type: str = mt.OCI_INDEX
    annotations: dict[str, str] = field(default_factory=dict)

    def select(self, wanted: Platform) -> Descriptor:
        for desc in self.manifests:
            if desc.platform is not None and wanted.matches(desc.platform):
                return desc
        known = ", ".join(str(d.platform) for d in self.manifests if d.platform) or "none"
        from containerdisk.errors import PlatformNotFound

        raise PlatformNotFound(f"image index has no manifest for {wanted} (it has: {known})")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "manifests": [d.to_json() for d in self.manifests],
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def encode(self) -> bytes:
        return canonical_json(self.to_json())


def parse_manifest(data: bytes, content_type: str | None, what: str) -> Manifest | Index:
    """Parse a manifest or index; the media type comes from the body, else the header."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{what} is {len(data)} bytes, over the 4 MiB manifest limit")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{what} is not JSON") from exc
    if not isinstance(obj, dict) or obj.get("schemaVersion") != 2:
        raise ManifestError(f"{what} is not a schema 2 manifest (schema 1 is not supported)")
    media_type = obj.get("mediaType") or (content_type or "").split(";")[0].strip()
    if not media_type:
        media_type = mt.OCI_INDEX if "manifests" in obj else mt.OCI_MANIFEST
    annotations = {str(k): str(v) for k, v in (obj.get("annotations") or {}).items()}
    if media_type in mt.INDEX_TYPES:
        entries = obj.get("manifests")
        if not isinstance(entries, list):
            raise ManifestError(f"{what} is an index without a manifests list")
        manifests = tuple(Descriptor.from_json(m, what) for m in entries)
        return Index(manifests, media_type, annotations)
    if media_type in mt.MANIFEST_TYPES:
        if not isinstance(obj.get("layers"), list) or "config" not in obj:
            raise ManifestError(f"{what} has no config or no layers list")
        return Manifest(
            config=Descriptor.from_json(obj["config"], what),
            layers=tuple(Descriptor.from_json(d, what) for d in obj["layers"]),
            media_type=media_type,
            annotations=annotations,
            artifact_type=obj.get("artifactType"),
        )
    raise ManifestError(f"{what} has unsupported media type {media_type!r}")


def image_config(
    platform: Platform, diff_ids: list[str], labels: dict[str, str], created: str | None = None
) -> bytes:
    """An OCI image config for a containerDisk (no entrypoint: nothing runs in it)."""
    obj: dict[str, Any] = {
        **platform.to_json(),
        "config": {"Labels": dict(labels)} if labels else {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if created:
        obj["created"] = created
    return canonical_json(obj)


def _checked_digest(value: Any, what: str) -> str:
    text = str(value)
    algo, _, hexpart = text.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
        raise ManifestError(f"{what} names an invalid or unsupported digest {text[:80]!r}")
    return text


def _checked_size(value: Any, what: str) -> int:
    if not isinstance(value, int) or value < 0:
        raise ManifestError(f"{what} has an invalid size {str(value)[:40]!r}")
    return value


def get_platform_from_config(config: bytes) -> Platform:
    """The platform an image config declares (``architecture``/``os``/``variant``)."""
    try:
        obj = json.loads(config)
        return Platform(str(obj["os"]), str(obj["architecture"]), obj.get("variant"))
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestError("image config names no os/architecture") from exc
