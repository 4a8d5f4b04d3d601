"""The import pipeline's exception tree.

Every failure leaves ``cdi`` as one of these; third-party exceptions (aiohttp,
botocore, OSError from a source) are translated in one place per source with
``raise ... from exc``::

    ImportError                      .reason: a CDI-like condition reason
    ├── RetryableImportError         try again later; the resume journal is kept
    │   ├── SourceUnavailable        connection errors, 5xx, 408, 429 (.retry_after)
    │   └── TransferStalled          no bytes for read_timeout seconds
    └── FinalImportError             retrying cannot help; nothing half-done looks complete
        ├── InvalidRequest           bad URL, name, size or checksum syntax
        ├── SourceNotFound           404/410, NoSuchKey, missing file, unknown tag
        ├── AuthFailed               401/403, rejected keys
        ├── SourceChanged            the source's validator changed during the import
        ├── ChecksumMismatch         expected and actual digest differ
        ├── UnsafeImage              backing file, external data file, foreign extents
        ├── ImageTooLarge            virtual size larger than the volume's usable size
        ├── UnsupportedFormat        unknown or mismatching format, unimplemented feature
        ├── InvalidImage             truncated or corrupt image
        ├── ConversionFailed         qemu-img convert failed
        └── VolumeError              pool and volume problems
            ├── VolumeNotFound
            ├── VolumeBusy           another import holds the volume
            └── VolumeExists         the volume already holds a disk / other capacity

Messages are one sentence naming the object and the cause; they never contain
credentials or query strings (see :func:`cdi.sources.base.redact_url`).
"""

from __future__ import annotations


class ImportError(Exception):
    """Base of every error the import pipeline raises."""

    reason = "ImportFailed"


class RetryableImportError(ImportError):
    """A transient failure: the same import may succeed later and will resume."""

    reason = "TransferFailed"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SourceUnavailable(RetryableImportError):
    reason = "SourceUnavailable"


class TransferStalled(RetryableImportError):
    reason = "TransferStalled"


class FinalImportError(ImportError):
    """A failure retrying cannot fix."""

    reason = "ImportFailed"


class InvalidRequest(FinalImportError):
    reason = "InvalidRequest"


class SourceNotFound(FinalImportError):
    reason = "NotFound"


class AuthFailed(FinalImportError):
    reason = "Unauthorized"


class SourceChanged(FinalImportError):
    reason = "SourceChanged"


class ChecksumMismatch(FinalImportError):
    reason = "ChecksumError"


class UnsafeImage(FinalImportError):
    reason = "UnsafeImage"


class ImageTooLarge(FinalImportError):
    reason = "ImageTooLarge"


class UnsupportedFormat(FinalImportError):
    reason = "UnsupportedFormat"


class InvalidImage(FinalImportError):
    reason = "InvalidImage"


class ConversionFailed(FinalImportError):
    reason = "ConversionFailed"


class VolumeError(FinalImportError):
    reason = "VolumeError"


class VolumeNotFound(VolumeError):
    reason = "VolumeNotFound"


class VolumeBusy(VolumeError):
    reason = "VolumeBusy"


class VolumeExists(VolumeError):
    reason = "VolumeExists"
