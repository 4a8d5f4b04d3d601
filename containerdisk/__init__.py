"""containerdisk: OCI references, layouts, containerDisk layers and a registry client.

The bottom layer of diskplane: it imports nothing of ours. The public surface
is below and documented in docs/containerdisk.md; the rest is private.
"""

from containerdisk.build import build_oci_layout
from containerdisk.client import RegistryClient
from containerdisk.errors import (
    AuthenticationFailed,
    BuildError,
    ContainerDiskError,
    DigestMismatch,
    InsecureRegistryRefused,
    InvalidReference,
    ManifestError,
    NotFound,
    PlatformNotFound,
    RegistryError,
    RegistryUnavailable,
    UnsafeLayer,
    UploadFailed,
)
from containerdisk.layout import OciLayout
from containerdisk.mediatypes import DISK_ARTIFACT_TYPE
from containerdisk.oci import Descriptor, Index, Manifest, Platform
from containerdisk.pull import RegistryDisk, ResolvedImage
from containerdisk.push import PushResult, volume_disk
from containerdisk.reference import Reference
from containerdisk.registry.transport import RegistrySettings

__all__ = [
    "DISK_ARTIFACT_TYPE",
    "AuthenticationFailed",
    "BuildError",
    "ContainerDiskError",
    "Descriptor",
    "DigestMismatch",
    "Index",
    "InsecureRegistryRefused",
    "InvalidReference",
    "Manifest",
    "ManifestError",
    "NotFound",
    "OciLayout",
    "Platform",
    "PlatformNotFound",
    "PushResult",
    "Reference",
    "RegistryClient",
    "RegistryDisk",
    "RegistryError",
    "RegistrySettings",
    "RegistryUnavailable",
    "ResolvedImage",
    "UnsafeLayer",
    "UploadFailed",
    "build_oci_layout",
    "volume_disk",
]
