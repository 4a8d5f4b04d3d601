"""cdi: the import pipeline (source -> safety -> transfer -> decode -> write) and its service.

The public surface is below; everything else is private. See docs/cdi.md.
"""

from cdi.checksum import Checksum
from cdi.errors import (
    AuthFailed,
    ChecksumMismatch,
    ConversionFailed,
    FinalImportError,
    ImageTooLarge,
    ImportError,
    InvalidImage,
    InvalidRequest,
    RetryableImportError,
    SourceChanged,
    SourceNotFound,
    SourceUnavailable,
    TransferStalled,
    UnsafeImage,
    UnsupportedFormat,
    VolumeBusy,
    VolumeError,
    VolumeExists,
    VolumeNotFound,
)
from cdi.pipeline import ImportResult, run_import
from cdi.progress import Progress, ProgressCallback
from cdi.request import Credentials, ImportRequest, SourceSpec, parse_quantity
from cdi.settings import GiB, ImportSettings, KiB, MiB
from cdi.volumes import Volume, VolumePool, usable_size

__all__ = [
    "AuthFailed",
    "Checksum",
    "ChecksumMismatch",
    "ConversionFailed",
    "Credentials",
    "FinalImportError",
    "GiB",
    "ImageTooLarge",
    "ImportError",
    "ImportRequest",
    "ImportResult",
    "ImportSettings",
    "InvalidImage",
    "InvalidRequest",
    "KiB",
    "MiB",
    "Progress",
    "ProgressCallback",
    "RetryableImportError",
    "SourceChanged",
    "SourceNotFound",
    "SourceSpec",
    "SourceUnavailable",
    "TransferStalled",
    "UnsafeImage",
    "UnsupportedFormat",
    "Volume",
    "VolumeBusy",
    "VolumeError",
    "VolumeExists",
    "VolumeNotFound",
    "VolumePool",
    "parse_quantity",
    "run_import",
    "usable_size",
]
