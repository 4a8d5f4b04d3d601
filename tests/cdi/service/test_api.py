"""Jobs API: validation, OpenAPI in sync, an HTTP import with SSE progress, list and get."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from cdi.service.routes import ROUTES
from tests.cdi.service.conftest import Service

TARGET = {"namespace": "default", "name": "disk1"}


def _body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source": {"http": {"url": "http://127.0.0.1:1/x.img"}},
        "target": dict(TARGET),
        "size": "64Mi",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        pytest.param(_body(target=None), 422, "target", id="missing-target"),
        pytest.param(_body(size="ten gigs"), 422, "size", id="bad-size"),
        pytest.param(
            _body(source={"http": {"url": "x"}, "blank": {}}), 422, "source", id="two-sources"
        ),
        pytest.param(_body(source={"ftp": {}}), 422, "source.ftp", id="unknown-source"),
        pytest.param(_body(source={"http": {}}), 422, "source.http.url", id="http-without-url"),
        pytest.param(
            _body(target={"namespace": "Bad_NS", "name": "x"}),
            422,
            "target.namespace",
            id="bad-namespace",
        ),
        pytest.param(_body(checksum="sha256:abcd"), 422, "checksum", id="short-digest"),
        pytest.param(_body(contentType="tarball"), 422, "contentType", id="bad-content-type"),
        pytest.param(_body(source={"pvc": dict(TARGET)}), 422, "source.pvc", id="clone-onto-self"),
        pytest.param([1, 2], 400, "body", id="not-an-object"),
    ],
)
async def test_validation_errors_name_the_field(
    service: Service, body: Any, status: int, field: str
) -> None:
    response = await service.client.post("/v1/imports", json=body)
    data = await response.json()
    assert response.status == status
    assert data["field"] == field
    assert field in data["error"]


async def test_malformed_json_is_400(service: Service) -> None:
    response = await service.client.post(
        "/v1/imports", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["field"] == "body"


async def test_unknown_job_is_404(service: Service) -> None:
    response = await service.client.get("/v1/imports/imp-nope")
    assert response.status == 404


async def test_openapi_matches_routes_and_responses(service: Service) -> None:
    response = await service.client.get("/v1/openapi.json")
    document = await response.json()
    jsonschema.Draft202012Validator.check_schema(document["components"]["schemas"]["ImportJob"])
    served = {
        (route.method, route.resource.canonical)
        for route in service.client.app.router.routes()
        if route.resource is not None
    }
    documented = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    assert served == documented
    assert {(r.doc.method, r.doc.path) for r in ROUTES} == documented
    # A real answer validates against the schema the document gives for it.
    job = await service.create(_body(source={"blank": {}}, size="8Mi"))
    schemas = {"$ref": "#/components/schemas/ImportJob", "components": document["components"]}
    jsonschema.validate(job, schemas)
    listing = await (await service.client.get("/v1/imports")).json()
    jsonschema.validate(
        listing,
        {"$ref": "#/components/schemas/ImportJobList", "components": document["components"]},
    )
    await service.wait(job["id"])


async def test_second_import_into_a_busy_volume_conflicts(service: Service) -> None:
    first = await service.create(_body(source={"upload": {}}))
    again = await service.client.post("/v1/imports", json=_body(source={"blank": {}}))
    assert again.status == 409
    assert first["id"] in (await again.json())["error"]
    await service.client.delete(f"/v1/imports/{first['id']}")


async def test_extra_header_values_are_not_echoed(service: Service) -> None:
    source = {"http": {"url": "http://127.0.0.1:1/x.img", "extraHeaders": ["X-Token: hunter2"]}}
    job = await service.create(_body(source=source, target={"namespace": "a", "name": "h"}))
    assert job["source"]["http"]["extraHeaders"] == ["X-Token: <redacted>"]
    listing = await (await service.client.get("/v1/imports")).text()
    assert "hunter2" not in listing
    await service.client.delete(f"/v1/imports/{job['id']}")


async def test_run_remote_import_follows_the_job_to_its_end(service: Service) -> None:
    from cdi.service.cli import run_remote_import

    url = str(service.client.make_url(""))
    body = {"source": {"blank": {}}, "target": {"namespace": "a", "name": "remote"}, "size": "8Mi"}
    assert await run_remote_import(url, body, label="import blank") == 0
    assert service.pool.get("a", "remote").state() == "Ready"
    body["target"] = {"namespace": "a", "name": "remote2"}
    body["source"] = {"pvc": {"namespace": "a", "name": "missing"}}
    assert await run_remote_import(url, body) == 1
