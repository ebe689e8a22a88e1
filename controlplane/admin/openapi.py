"""The OpenAPI 3.1 document of the admin API, with schemas taken from the policy model itself."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from controlplane.policy import Problem
from controlplane.policy.documents import KINDS


def _json(schema: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _responses(ok: str, *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": ok}}
    reasons = {404: "not found", 409: "revision conflict or object in use", 422: "invalid policy",
               503: "store unavailable"}
    for status in errors:
        out[str(status)] = {"description": reasons[status], **_json("Error")}
    return out


@cache
def openapi_document() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(k.spec, "validation") for k in KINDS.values()] + [(Problem, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = dict(defs["$defs"])
    schemas["Document"] = {
        "type": "object",
        "required": ["kind", "name", "spec"],
        "properties": {
            "kind": {"enum": sorted(KINDS)},
            "name": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"},
            "spec": {"oneOf": [{"$ref": f"#/components/schemas/{k.spec.__name__}"} for k in KINDS.values()]},
        },
    }
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"},
                       "problems": {"type": "array", "items": {"$ref": "#/components/schemas/Problem"}}},
    }
    if_match = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
                "description": "the revision (ETag) the write expects to replace"}
    paths: dict[str, Any] = {
        "/healthz": {"get": {"summary": "liveness and current revision", "responses": _responses("ok")}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": _responses("metrics")}},
        "/api/v1/policy": {"get": {"summary": "every policy object at the current revision",
                                   "responses": _responses("policy")}},
        "/api/v1/apply": {"post": {
            "summary": "create or replace several objects in one revision",
            "parameters": [if_match],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["documents"],
                "properties": {"documents": {"type": "array",
                                             "items": {"$ref": "#/components/schemas/Document"}}}}}}},
            "responses": _responses("applied", 409, 422, 503),
        }},
        "/api/v1/revisions": {"get": {"summary": "policy history, newest first", "responses": _responses("ok")}},
        "/api/v1/proxies": {"get": {"summary": "connected proxies: ACKed, in-flight and NACKed versions",
                                    "responses": _responses("ok")}},
    }
    for kind in KINDS.values():
        name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
        paths[f"/api/v1/{kind.plural}"] = {"get": {"summary": f"list {kind.plural}", "responses": _responses("ok")}}
        paths[f"/api/v1/{kind.plural}/{{name}}"] = {
            "get": {"summary": f"read a {kind.name}", "parameters": [name_param], "responses": _responses("ok", 404)},
            "put": {"summary": f"create or replace a {kind.name}", "parameters": [name_param, if_match],
                    "requestBody": {"required": True, **_json("Document")},
                    "responses": _responses("stored", 409, 422, 503)},
            "delete": {"summary": f"delete a {kind.name}", "parameters": [name_param, if_match],
                       "responses": _responses("deleted", 404, 409, 503)},
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "sluice admin API", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
