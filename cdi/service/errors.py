"""The importer service's exceptions; the one place third-party errors become ours.

::

    ServiceError
    ├── RequestInvalid            a request body or parameter is wrong (400/422); names the field
    ├── JobNotFound               no job with that id (404)
    ├── JobConflict               the job or volume is in a state that forbids the action (409)
    │   └── UploadImportEnded     a streamed upload's import ended while bytes were arriving
    ├── AuthError                 missing/invalid credentials (401)
    │   └── AuthForbidden         valid credentials for something else (403)
    ├── UploadError               the upload body or its Content-Range is wrong (400/409/416)
    ├── CloneError                a pvc clone cannot proceed (source busy, too big, missing)
    ├── JobFailed                 the import itself failed; ``final`` says whether retrying helps
    ├── ServiceConfigError        the service cannot start with these settings
    └── ClientError               raised by :mod:`cdi.service.client` (HTTP status + message)

Messages are sentences naming the object and the cause; they never carry
tokens, passwords or presigned URLs.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the importer service raises."""


class RequestInvalid(ServiceError):
    """A request is malformed (``status`` 400) or semantically wrong (422)."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.status = status


class JobNotFound(ServiceError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"import job {job_id!r} does not exist")
        self.job_id = job_id


class JobConflict(ServiceError):
    """The action does not fit the job's or the volume's current state."""


class UploadImportEnded(JobConflict):
    """The import a streamed upload feeds has ended (failed or was cancelled)."""


class AuthError(ServiceError):
    """Credentials are missing, malformed, expired or wrongly signed (401)."""


class AuthForbidden(AuthError):
    """Credentials are valid but do not cover this object (403)."""


class UploadError(ServiceError):
    """An upload request cannot be accepted as sent."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class CloneError(ServiceError):
    """A pvc clone cannot proceed."""


class JobFailed(ServiceError):
    """An import failed. ``reason`` is a CamelCase word for metrics and status."""

    def __init__(self, reason: str, message: str, *, final: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.final = final


class ServiceConfigError(ServiceError):
    """The service settings are inconsistent or unsafe."""


class ClientError(ServiceError):
    """An importer service call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
