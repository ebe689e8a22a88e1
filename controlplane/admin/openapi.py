"""The OpenAPI 3.1 document of the admin API, with schemas taken from the policy model itself."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from controlplane.policy import Problem
from controlplane.policy.documents import KINDS


def _json(schema: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def text_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _responses(ok: str, *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": ok}}
    reasons = {400: "malformed request", 401: "missing, unknown or expired token", 403: "the token's role is too low",
               404: "not found", 409: "revision conflict, object in use, or not possible in this state",
               413: "body too large", 415: "unsupported content type", 422: "invalid policy",
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
    limit = {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}}

    def number(name: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}

    documents = {"type": "object", "required": ["documents"],
                 "properties": {"documents": {"type": "array", "items": {"$ref": "#/components/schemas/Document"}}}}
    paths: dict[str, Any] = {
        "/healthz": {"get": {"summary": "liveness (the process answers) and current revision", "security": [],
                             "responses": _responses("ok")}},
        "/readyz": {"get": {"summary": "readiness: the store answers, the newest revision is pushed, every "
                                       "background loop runs; 503 names the checks that fail", "security": [],
                            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": _responses("metrics", 401, 403)}},
        "/api/v1/openapi.json": {"get": {"summary": "this document", "security": [], "responses": _responses("ok")}},
        "/api/v1/policy": {"get": {"summary": "every policy object at the current revision",
                                   "responses": _responses("policy", 401, 403)}},
        "/api/v1/apply": {"post": {
            "summary": "create or replace several objects in one revision; with dry_run, only show what "
                       "would change (objects, field by field, and Envoy resources)",
            "parameters": [if_match, {"name": "dry_run", "in": "query", "required": False,
                                      "schema": {"type": "boolean", "default": False}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": documents}}},
            "responses": _responses("applied, or the dry run's preview", 400, 401, 403, 409, 422, 503),
        }},
        "/api/v1/revisions": {"get": {"summary": "policy history, newest first", "parameters": [limit],
                                      "responses": _responses("ok", 400, 401, 403, 503)}},
        "/api/v1/revisions/{number}": {"get": {"summary": "one revision with its documents",
                                               "parameters": [number("number")],
                                               "responses": _responses("ok", 400, 401, 403, 404, 503)}},
        "/api/v1/revisions/{a}/diff/{b}": {"get": {
            "summary": "what changed from revision a to revision b: objects added, removed and changed (by field)",
            "parameters": [number("a"), number("b")], "responses": _responses("ok", 400, 401, 403, 404, 503)}},
        "/api/v1/revisions/{number}/rollback": {"post": {
            "summary": "a new revision with the content of this one", "parameters": [number("number"), if_match],
            "responses": _responses("rolled back", 400, 401, 403, 404, 409, 422, 503)}},
        "/api/v1/audit": {"get": {"summary": "the audit log, newest first: who changed what, when, and the diff",
                                  "parameters": [limit], "responses": _responses("ok", 400, 401, 403, 503)}},
        "/api/v1/tokens": {
            "get": {"summary": "admin API tokens (never their secrets); admin role",
                    "responses": _responses("ok", 401, 403, 503)},
            "post": {"summary": "create a token; the answer holds its secret, shown only this once; admin role",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "required": ["name", "role"], "properties": {
                             "name": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9._-]{0,62})$"},
                             "role": {"enum": ["viewer", "operator", "admin"]},
                             "expires_in_s": {"type": "number", "exclusiveMinimum": 0}}}}}},
                     "responses": {"201": {"description": "created"},
                                   **_responses("", 400, 401, 403, 409, 422, 503)}},
        },
        "/api/v1/tokens/{name}": {"delete": {
            "summary": "revoke a token; admin role",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": _responses("revoked", 401, 403, 404, 409, 503)}},
        "/api/v1/proxies": {"get": {
            "summary": "connected proxies: counts by state over the whole fleet, and a page of proxies with their "
                       "ACKed, in-flight and NACKed versions",
            "parameters": [
                {"name": "state", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": ["current", "behind", "nacked"]}},
                {"name": "offset", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 5000, "default": 1000}},
            ],
            "responses": _responses("ok", 400, 401, 403)}},
        "/api/v1/replica": {"get": {"summary": "this replica: its id, its store, the leases it holds",
                                    "responses": _responses("ok", 401, 403)}},
        "/api/v1/canaries/{name}/status": {"get": {
            "summary": "a canary's state, steps, event log and the open analysis window's live figures",
            "parameters": [text_param("name")], "responses": _responses("ok", 401, 403, 404)}},
        "/api/v1/canaries/{name}/{action}": {"post": {
            "summary": "operate a canary: pause, resume, promote (now) or abort (roll back now)",
            "parameters": [text_param("name"), {"name": "action", "in": "path", "required": True,
                                                "schema": {"enum": ["pause", "resume", "promote", "abort"]}}],
            "responses": _responses("done", 401, 403, 404, 409, 503)}},
        "/api/v1/geo/table": {"post": {
            "summary": "upload the CIDR -> country/region table: CSV (text/csv) or a MaxMind DB "
                       "(application/octet-stream); applied whole, or refused with every bad row",
            "parameters": [{"name": "format", "in": "query", "required": False,
                            "schema": {"enum": ["csv", "mmdb"]}}],
            "requestBody": {"required": True, "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": _responses("applied", 401, 403, 409, 413, 415, 422, 503)}},
        "/api/v1/geo/table/info": {"get": {"summary": "the geo table in force: size, source, regions",
                                           "responses": _responses("ok", 401, 403, 404, 503)}},
        "/api/v1/tenants/{name}/keys": {
            "get": {"summary": "a tenant's API key ids (never the keys)", "parameters": [text_param("name")],
                    "responses": _responses("ok", 401, 403, 404)},
            "post": {"summary": "create an API key (and the tenant if new); the answer holds the key, shown only "
                                "this once: only its SHA-256 is stored",
                     "parameters": [text_param("name")],
                     "requestBody": {"required": False, "content": {"application/json": {"schema": {
                         "type": "object", "properties": {"id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,31}$"}}}}}},
                     "responses": {"201": {"description": "created"}, **_responses("", 400, 401, 403, 409, 422, 503)}},
        },
        "/api/v1/tenants/{name}/keys/{id}": {"delete": {
            "summary": "revoke an API key: the edge refuses it as soon as the revision reaches it",
            "parameters": [text_param("name"), text_param("id")],
            "responses": _responses("revoked", 400, 401, 403, 404, 409, 503)}},
    }
    for kind in KINDS.values():
        name_param = text_param("name")
        paths[f"/api/v1/{kind.plural}"] = {"get": {"summary": f"list {kind.plural}",
                                                   "responses": _responses("ok", 401, 403)}}
        paths[f"/api/v1/{kind.plural}/{{name}}"] = {
            "get": {"summary": f"read a {kind.name}", "parameters": [name_param],
                    "responses": _responses("ok", 401, 403, 404)},
            "put": {"summary": f"create or replace a {kind.name}", "parameters": [name_param, if_match],
                    "requestBody": {"required": True, **_json("Document")},
                    "responses": _responses("stored", 400, 401, 403, 409, 422, 503)},
            "delete": {"summary": f"delete a {kind.name}", "parameters": [name_param, if_match],
                       "responses": _responses("deleted", 400, 401, 403, 404, 409, 503)},
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "sluice admin API", "version": "1"},
        "paths": paths,
        # Every operation needs a token once tokens exist (see the README, "Admin API security").
        "security": [{"bearer": []}],
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
