"""S3 source via boto3 (any S3-compatible endpoint); blocking calls run in threads.

The one place that translates botocore exceptions into ``cdi.errors``.
Accepted URLs (CDI's forms plus ``s3://``):

- ``s3://bucket/key`` with the endpoint given separately (or AWS by default);
- ``http(s)://host:port/bucket/key``: the endpoint is ``http(s)://host:port``, path style;
- ``https://bucket.s3.REGION.amazonaws.com/key``: AWS, virtual-hosted.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore
import botocore.exceptions
from botocore.config import Config

from cdi.errors import (
    AuthFailed,
    FinalImportError,
    ImportError,
    InvalidRequest,
    SourceChanged,
    SourceNotFound,
    SourceUnavailable,
    TransferStalled,
)
from cdi.formats.detect import HEADER_BYTES
from cdi.settings import ImportSettings, MiB
from cdi.sources.base import SourceInfo

_AWS_VHOST = re.compile(r"^(?P<bucket>.+)\.s3[.-](?P<region>[a-z0-9-]+)\.amazonaws\.com$")
_AWS_HOST = re.compile(r"^s3[.-](?P<region>[a-z0-9-]+)\.amazonaws\.com$")
PIECE = 1 * MiB


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str
    endpoint_url: str | None
    region: str | None

    @property
    def description(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.key}{where}"


def parse_s3_url(url: str, endpoint_url: str | None, region: str | None) -> S3Location:
    parts = urllib.parse.urlsplit(url)
    path = parts.path.lstrip("/")
    if parts.scheme == "s3":
        if not parts.netloc or not path:
            raise InvalidRequest(
                f"S3 URL {parts.scheme}://{parts.netloc}/{path} lacks a bucket or key"
            )
        return S3Location(parts.netloc, path, endpoint_url, region)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"{parts.scheme}://{parts.hostname}/{path} is not an S3 URL")
    vhost = _AWS_VHOST.match(parts.hostname)
    if vhost and path:
        return S3Location(vhost["bucket"], path, None, region or vhost["region"])
    aws = _AWS_HOST.match(parts.hostname)
    bucket, _, key = path.partition("/")
    if not bucket or not key:
        raise InvalidRequest(f"S3 URL {parts.hostname}/{path} needs the form /bucket/key")
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    endpoint = f"{parts.scheme}://{host}"
    return S3Location(bucket, key, endpoint, region or (aws["region"] if aws else None))


class S3Source:
    """One S3 object; a boto3 client created on first use, shared by worker threads."""

    def __init__(
        self,
        location: S3Location,
        *,
        access_key_id: str | None,
        secret_key: str | None,
        ca_file: Path | None,
        insecure: bool,
        settings: ImportSettings,
    ) -> None:
        self.location = location
        self.description = location.description
        self._keys = (access_key_id, secret_key)
        self._verify: bool | str = False if insecure else (str(ca_file) if ca_file else True)
        self._settings = settings
        self._client: Any = None
        self._etag: str | None = None

    def _s3(self) -> Any:
        if self._client is None:
            config = Config(
                s3={"addressing_style": "path" if self.location.endpoint_url else "auto"},
                retries={"max_attempts": 1, "mode": "standard"},  # our own retry policy
                connect_timeout=self._settings.connect_timeout,
                read_timeout=self._settings.read_timeout,
                max_pool_connections=self._settings.concurrency + 2,
                # No keys: anonymous (public buckets), not the host's ambient credentials.
                signature_version="s3v4" if self._keys[0] else botocore.UNSIGNED,
            )
            access, secret = self._keys
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.location.endpoint_url,
                region_name=self.location.region or "us-east-1",
                aws_access_key_id=access,
                aws_secret_access_key=secret,
                verify=self._verify,
                config=config,
            )
        return self._client

    async def _call(self, name: str, **kwargs: Any) -> Any:
        def call() -> Any:
            return getattr(self._s3(), name)(
                Bucket=self.location.bucket, Key=self.location.key, **kwargs
            )

        try:
            return await asyncio.to_thread(call)
        except Exception as exc:  # botocore raises many unrelated types
            raise _translate(self.description, exc) from exc

    async def probe(self) -> SourceInfo:
        head = await self._call("head_object")
        size = int(head["ContentLength"])
        self._etag = head.get("ETag")
        first = b""
        if size:
            first = b"".join([p async for p in self.stream(0, min(size, HEADER_BYTES))])
        return SourceInfo(size, True, f"etag:{self._etag}" if self._etag else None, first)

    async def revalidate(self, saved: SourceInfo) -> SourceInfo | None:
        """One HEAD: ``saved`` (a journalled probe) if size and ETag still match."""
        head = await self._call("head_object")
        etag = head.get("ETag")
        if (
            not etag
            or int(head["ContentLength"]) != saved.size
            or f"etag:{etag}" != saved.validator
        ):
            return None
        self._etag = etag
        return saved

    async def stream(self, start: int, end: int | None) -> AsyncGenerator[bytes, None]:
        kwargs: dict[str, Any] = {}
        if start > 0 or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if self._etag:
            kwargs["IfMatch"] = self._etag
        response = await self._call("get_object", **kwargs)
        body = response["Body"]
        try:
            while True:
                try:
                    piece = await asyncio.to_thread(body.read, PIECE)
                except Exception as exc:
                    raise _translate(self.description, exc) from exc
                if not piece:
                    return
                yield piece
        finally:
            await asyncio.to_thread(body.close)

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)


def _translate(what: str, exc: Exception) -> ImportError:
    if isinstance(exc, ImportError):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound") or status == 404:
            return SourceNotFound(f"{what} does not exist ({code or status})")
        if code in ("PreconditionFailed", "412") or status == 412:
            return SourceChanged(f"{what} changed during the import (ETag no longer matches)")
        if status in (401, 403) or code in (
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "403",
        ):
            return AuthFailed(f"{what} refused access ({code or status}); check the keys")
        if status >= 500 or status in (408, 429) or code in ("SlowDown", "InternalError"):
            return SourceUnavailable(f"{what} answered {code or status}; will retry")
        return FinalImportError(f"{what} failed with {code or status}")
    if isinstance(
        exc, botocore.exceptions.ReadTimeoutError | botocore.exceptions.ConnectTimeoutError
    ):
        return TransferStalled(f"{what} sent nothing for too long; will retry")
    if isinstance(
        exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return AuthFailed(f"{what} needs credentials (accessKeyId and secretKey)")
    if isinstance(exc, botocore.exceptions.BotoCoreError | OSError):
        return SourceUnavailable(f"connection to {what} failed ({type(exc).__name__}); will retry")
    return FinalImportError(f"reading {what} failed ({type(exc).__name__})")
