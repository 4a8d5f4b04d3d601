"""Build the ``Source`` for a ``SourceSpec``."""

from __future__ import annotations

from pathlib import Path

from cdi.errors import InvalidRequest
from cdi.request import Credentials, SourceSpec
from cdi.settings import ImportSettings
from cdi.sources.base import Source
from cdi.sources.blank import BlankSource
from cdi.sources.file import FileSource


def open_source(spec: SourceSpec, settings: ImportSettings) -> Source:
    source = _open(spec, settings)
    if spec.display_name:
        source.description = spec.display_name
    return source


def _open(spec: SourceSpec, settings: ImportSettings) -> Source:
    creds = spec.credentials or Credentials()
    if spec.kind == "blank":
        return BlankSource()
    if spec.kind == "file":
        assert spec.path is not None
        return FileSource(Path(spec.path), spec.display_name)
    assert spec.url is not None
    if spec.kind == "http":
        from cdi.sources.http import HttpSource

        headers = dict(spec.extra_headers)
        if creds.token:
            headers["Authorization"] = f"Bearer {creds.token}"
        return HttpSource(
            spec.url,
            headers=headers,
            basic=None if creds.token else creds.basic(),
            ca_file=spec.ca_file,
            insecure=spec.insecure_skip_verify,
            settings=settings,
        )
    if spec.kind == "s3":
        from cdi.sources.s3 import S3Source, parse_s3_url  # boto3 is slow to import

        location = parse_s3_url(spec.url, spec.endpoint_url, spec.region)
        return S3Source(
            location,
            access_key_id=creds.access_key_id,
            secret_key=creds.secret_key,
            ca_file=spec.ca_file,
            insecure=spec.insecure_skip_verify,
            settings=settings,
        )
    if spec.kind == "registry":
        from cdi.sources.registry import RegistrySource

        return RegistrySource(spec, settings)
    raise InvalidRequest(f"source kind {spec.kind!r} is not supported")
