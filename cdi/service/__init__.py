"""cdi.service: the async importer service (jobs API, uploads, metrics) over the pipeline."""

from cdi.service.app import create_app, serve
from cdi.service.client import ImporterClient, JobStatus, UploadStatus
from cdi.service.errors import (
    AuthError,
    AuthForbidden,
    ClientError,
    CloneError,
    JobConflict,
    JobFailed,
    JobNotFound,
    RequestInvalid,
    ServiceConfigError,
    ServiceError,
    UploadError,
)
from cdi.service.model import ImportJob, ImportSpec, Phase, VolumeRef, parse_quantity
from cdi.service.ports import ImportOutcome, ImportRunner, ProgressLike, ProgressUpdate
from cdi.service.settings import ServiceSettings

__all__ = [
    "AuthError",
    "AuthForbidden",
    "ClientError",
    "CloneError",
    "ImportJob",
    "ImportOutcome",
    "ImportRunner",
    "ImportSpec",
    "ImporterClient",
    "JobConflict",
    "JobFailed",
    "JobNotFound",
    "JobStatus",
    "Phase",
    "ProgressLike",
    "ProgressUpdate",
    "RequestInvalid",
    "ServiceConfigError",
    "ServiceError",
    "ServiceSettings",
    "UploadError",
    "UploadStatus",
    "VolumeRef",
    "create_app",
    "parse_quantity",
    "serve",
]
