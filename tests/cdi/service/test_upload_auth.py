"""Upload tokens: 401 (none, expired, forged), 403 (other volume); offsets; tokens never logged."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from cdi.service import VolumeRef
from tests.cdi.service.conftest import Service

VOLUME = {"namespace": "default", "name": "up"}
URL = "/v1/uploads/default/up"


async def _upload_job(service: Service, **extra: Any) -> dict[str, Any]:
    return await service.create(
        {"source": {"upload": {}}, "target": VOLUME, "size": "64Mi", **extra}
    )


async def _token(service: Service, volume: dict[str, str] = VOLUME) -> str:
    response = await service.client.post("/v1/upload-tokens", json={"target": volume})
    assert response.status == 201
    return str((await response.json())["token"])


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_upload_needs_a_valid_token_for_that_volume(service: Service) -> None:
    await _upload_job(service)
    state = service.state
    expired, _ = state.tokens.issue(VolumeRef("default", "up"), 60, now=time.time() - 3600)
    other = await _token(service, {"namespace": "default", "name": "other"})
    good = await _token(service)
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    cases = [({}, 401), (_bearer(expired), 401), (_bearer(forged), 401), (_bearer(other), 403)]
    for headers, status in cases:
        response = await service.client.put(URL + "/async", data=b"x" * 10, headers=headers)
        assert response.status == status, (headers, await response.text())
        if status == 401:
            assert response.headers["WWW-Authenticate"] == "Bearer"
    assert state.staging.received(state.scheduler.list()[0].id) == 0
    key = service.settings.state_dir / "upload-token.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (service.settings.state_dir / "jobs.sqlite3").stat().st_mode & 0o777 == 0o600


async def test_offsets_and_continuation_rules(service: Service) -> None:
    await _upload_job(service)
    headers = _bearer(await _token(service))
    head = await service.client.head(URL, headers=headers)
    assert head.status == 200
    assert head.headers["Upload-Offset"] == "0"
    first = await service.client.put(
        URL + "/async",
        data=b"a" * 100,
        headers=headers | {"Content-Range": "bytes 0-99/300"},
    )
    assert (await first.json())["bytesReceived"] == 100
    gap = await service.client.put(
        URL + "/async",
        data=b"c" * 100,
        headers=headers | {"Content-Range": "bytes 200-299/300"},
    )
    assert gap.status == 416
    changed = await service.client.put(
        URL + "/async",
        data=b"b" * 100,
        headers=headers | {"Content-Range": "bytes 100-199/400"},
    )
    assert changed.status == 409
    status = await (await service.client.get(URL, headers=headers)).json()
    assert status["bytesReceived"] == 100
    assert status["totalBytes"] == 300
    # Raw bytes stream into the import, which starts with the first request.
    assert status["phase"] in ("Queued", "Running")
    assert status["complete"] is False


async def test_no_upload_job_is_404_and_token_needs_api_auth(service_factory: Any) -> None:
    service = await service_factory(api_token="s3cret-api-token")
    anonymous = await service.client.post("/v1/upload-tokens", json={"target": VOLUME})
    assert anonymous.status == 401
    response = await service.client.post(
        "/v1/upload-tokens", json={"target": VOLUME}, headers=_bearer("s3cret-api-token")
    )
    token = (await response.json())["token"]
    missing = await service.client.put(URL, data=b"x", headers=_bearer(token))
    assert missing.status == 404
    assert (await service.client.get("/healthz")).status == 200
    assert (await service.client.get("/metrics")).status == 401


async def test_tokens_never_reach_the_logs(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await _upload_job(service)
    token = await _token(service)
    await service.client.put(URL + "/async", data=b"z" * 10, headers={"Content-Range": "x"})
    await service.client.put(
        URL + "/async", data=b"z" * 10, headers=_bearer(token) | {"Content-Range": "bytes 0-9/20"}
    )
    await service.client.head(URL, headers=_bearer(token))
    await service.client.put(URL + "/async", data=b"z", headers=_bearer(token + "x"))
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "issued an upload token for volume default/up" in logged
    assert token not in logged
    assert token.split(".")[2] not in logged
