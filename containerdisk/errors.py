"""containerdisk's exceptions; every error this package raises is one of these.

::

    ContainerDiskError                 base of everything below
    ├── InvalidReference               a reference string that cannot be parsed
    ├── ManifestError                  a manifest/index/config that is malformed or unsupported
    ├── PlatformNotFound               an index has no manifest for the requested platform
    ├── DigestMismatch                 bytes that do not hash to the digest that names them
    ├── UnsafeLayer                    a layer or disk refused by validation (tar traversal,
    │                                  links out, devices, two disks, backing file, bad format)
    ├── BuildError                     a disk that cannot be turned into a containerDisk/artifact
    └── RegistryError                  anything that went wrong talking to a registry
        ├── RegistryUnavailable        connection errors, 5xx, 429 after the retries ran out
        ├── AuthenticationFailed       401/403: missing or wrong credentials (never echoed)
        ├── InsecureRegistryRefused    a registry that only speaks plain HTTP, without --insecure
        ├── NotFound                   404 on a manifest or blob
        └── UploadFailed               an upload the registry refused or could not resume

The one place that turns aiohttp's exceptions into these is
:func:`containerdisk.registry.transport.translate_errors`; messages never
contain credentials, tokens or unbounded remote payloads.
"""

from __future__ import annotations


class ContainerDiskError(Exception):
    """Base of every containerdisk error."""


class InvalidReference(ContainerDiskError):
    """A reference string that is not ``[registry/]repo[:tag][@digest]``."""


class ManifestError(ContainerDiskError):
    """A manifest, index or config that is malformed or of an unsupported kind."""


class PlatformNotFound(ManifestError):
    """An image index that lists no manifest for the requested platform."""


class DigestMismatch(ContainerDiskError):
    """Content whose digest is not the one the manifest (or the reference) names."""


class UnsafeLayer(ContainerDiskError):
    """A layer or disk refused by validation; nothing of it was kept."""


class BuildError(ContainerDiskError):
    """A disk that cannot be built into a containerDisk or an artifact."""


class RegistryError(ContainerDiskError):
    """A registry operation that failed."""


class RegistryUnavailable(RegistryError):
    """Connection errors, 5xx or 429 answers that outlasted the retries."""


class AuthenticationFailed(RegistryError):
    """The registry refused our credentials (or we had none)."""


class InsecureRegistryRefused(RegistryError):
    """The registry answers only plain HTTP and ``insecure`` was not set."""


class NotFound(RegistryError):
    """A manifest or blob that the registry does not have."""


class UploadFailed(RegistryError):
    """A blob or manifest upload the registry refused or that could not be resumed."""
