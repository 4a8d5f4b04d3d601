"""The OpenAPI 3.1 description of the importer service, built from the route table.

Routes (:data:`cdi.service.routes.ROUTES`) and schemas
(:mod:`cdi.service.schema`) are the sources; this only arranges them, so a
route cannot exist without its description.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cdi.service.schema import SCHEMAS, JsonObject

API_VERSION = "1.0.0"


@dataclass(frozen=True)
class RouteDoc:
    """What OpenAPI says about one route."""

    method: str
    path: str
    operation_id: str
    summary: str
    request: str | None = None  # schema name of a JSON body
    request_content: str | None = None  # another media type (upload bodies)
    responses: Mapping[int, str | None] = field(default_factory=dict)  # status -> schema name
    response_content: str = "application/json"
    auth: str | None = "apiToken"  # "apiToken", "uploadToken" or None


def _response(schema: str | None, content: str) -> JsonObject:
    if schema is None:
        return {"description": "no JSON body"}
    return {
        "description": schema,
        "content": {content: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _operation(route: RouteDoc) -> JsonObject:
    op: JsonObject = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "responses": {
            str(status): _response(
                schema, route.response_content if status < 300 else "application/json"
            )
            for status, schema in sorted(route.responses.items())
        },
    }
    params = [
        {"name": part.strip("{}"), "in": "path", "required": True, "schema": {"type": "string"}}
        for part in route.path.split("/")
        if part.startswith("{")
    ]
    if params:
        op["parameters"] = params
    if route.request is not None:
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{route.request}"}}
            },
        }
    elif route.request_content is not None:
        op["requestBody"] = {
            "required": True,
            "content": {
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in route.request_content.split(",")
            },
        }
    op["security"] = [{route.auth: []}] if route.auth else []
    return op


def build_document(routes: Sequence[RouteDoc]) -> JsonObject:
    paths: JsonObject = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "diskplane importer service",
            "version": API_VERSION,
            "description": "Import jobs, resumable uploads, progress (docs/importer-service.md).",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "apiToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "set with --api-token-file; off on loopback by default",
                },
                "uploadToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "from POST /v1/upload-tokens, scoped to one volume",
                },
            },
        },
    }
