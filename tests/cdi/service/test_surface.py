"""The package's public surface is pinned, and the client lets no aiohttp error out."""

from __future__ import annotations

import pytest

import cdi.service
from cdi.service import ClientError, ImporterClient
from tests.support.process import free_port

EXPECTED = {
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
}


def test_all_is_pinned() -> None:
    assert set(cdi.service.__all__) == EXPECTED


async def test_client_errors_are_ours_when_nobody_listens() -> None:
    async with ImporterClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(ClientError) as caught:
            await client.list_imports()
    assert caught.value.status == 0
    assert "/v1/imports" in str(caught.value)


async def test_client_surfaces_the_field_of_a_validation_error(service: object) -> None:
    from tests.cdi.service.conftest import Service

    assert isinstance(service, Service)
    url = str(service.client.make_url(""))
    async with ImporterClient(url) as client:
        with pytest.raises(ClientError) as caught:
            await client.create_import({"source": {"blank": {}}, "size": "1Gi"})
    assert caught.value.status == 422
    assert caught.value.field == "target"
