"""Media types: OCI and Docker schema 2 on the wire, and diskplane's disk artifact.

Disk artifacts (ORAS-style; the disk file itself is the layer, no tar):

- ``artifactType``: :data:`DISK_ARTIFACT_TYPE` (``application/vnd.diskplane.disk.v1``),
  config: the OCI empty descriptor (``application/vnd.oci.empty.v1+json``, ``{}``).
- one layer per disk, or one per fixed-size segment, of media type
  ``application/vnd.diskplane.disk.<format>[.segment][+zstd]`` with ``<format>`` one
  of ``raw`` / ``qcow2``; segments carry the annotations in :mod:`containerdisk.annotations`.
"""

from __future__ import annotations

from typing import Literal

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
# What we ask for on pull, best first.
ACCEPT_MANIFESTS = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)

TAR_LAYER_TYPES = (
    OCI_LAYER_TAR,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
)

DISK_ARTIFACT_TYPE = "application/vnd.diskplane.disk.v1"
_DISK_PREFIX = "application/vnd.diskplane.disk."
DISK_FORMATS = ("raw", "qcow2")

EMPTY_CONFIG_BYTES = b"{}"


def disk_layer_type(disk_format: str, *, segmented: bool, zstd: bool) -> str:
    """The media type of a disk artifact layer (see the module docstring)."""
    if disk_format not in DISK_FORMATS:
        raise ValueError(f"disk format {disk_format!r} is not one of {DISK_FORMATS}")
    out = _DISK_PREFIX + disk_format + (".segment" if segmented else "")
    return out + ("+zstd" if zstd else "")


def parse_disk_layer_type(media_type: str) -> tuple[str, bool, bool] | None:
    """``(format, segmented, zstd)`` for a disk artifact layer type, None for anything else."""
    if not media_type.startswith(_DISK_PREFIX):
        return None
    body = media_type[len(_DISK_PREFIX) :]
    zstd = body.endswith("+zstd")
    body = body.removesuffix("+zstd")
    segmented = body.endswith(".segment")
    body = body.removesuffix(".segment")
    if body not in DISK_FORMATS:
        return None
    return body, segmented, zstd


def layer_compression(media_type: str) -> Literal["gzip", "zstd"] | None:
    """``gzip`` / ``zstd`` / ``None`` for a tar layer media type (None: uncompressed)."""
    if media_type.endswith(("+gzip", ".tar.gzip")):
        return "gzip"
    if media_type.endswith("+zstd"):
        return "zstd"
    return None
