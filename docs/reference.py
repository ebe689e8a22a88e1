"""The reference pages, written from the code at build time so that they cannot drift:
the policy reference from the pydantic models' JSON schema, the admin API reference from
the OpenAPI document the control plane serves. `docs/hooks.py` adds both to the site.
"""

from __future__ import annotations

import json
from typing import Any

from controlplane.admin.openapi import openapi_document
from controlplane.policy import KINDS

Schema = dict[str, Any]

POLICY_PAGE = "reference/policy.md"
ADMIN_API_PAGE = "reference/admin-api.md"

_BOUNDS = (("minimum", "≥ {}"), ("exclusiveMinimum", "> {}"), ("maximum", "≤ {}"), ("exclusiveMaximum", "< {}"),
           ("minLength", "length ≥ {}"), ("maxLength", "length ≤ {}"), ("minItems", "≥ {} items"),
           ("maxItems", "≤ {} items"), ("minProperties", "≥ {} entries"), ("maxProperties", "≤ {} entries"),
           ("pattern", "matches `` {} ``"))


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _resolve(node: Schema, defs: Schema) -> Schema:
    ref = node.get("$ref")
    return defs[ref.rsplit("/", 1)[-1]] if ref else node


def _nullable(node: Schema) -> tuple[Schema, bool]:
    """The schema without its `null` alternative, and whether it had one."""
    variants = node.get("anyOf")
    if not variants:
        return node, False
    rest = [v for v in variants if v.get("type") != "null"]
    merged = {k: v for k, v in node.items() if k != "anyOf"}
    if len(rest) == 1:
        return {**rest[0], **merged}, len(rest) < len(variants)
    return {**merged, "anyOf": rest}, len(rest) < len(variants)


def _type(node: Schema, defs: Schema) -> str:
    node, nullable = _nullable(node)
    if "$ref" in node:
        text = f"object ({node['$ref'].rsplit('/', 1)[-1]})"
    elif "anyOf" in node:
        text = " or ".join(_type(v, defs) for v in node["anyOf"])
    elif "enum" in node:
        text = " | ".join(f"`{v}`" for v in node["enum"])
    elif "const" in node:
        text = f"`{node['const']}`"
    elif node.get("type") == "array":
        text = f"list of {_type(node.get('items', {}), defs)}"
    elif node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        text = f"map of string to {_type(node['additionalProperties'], defs)}"
    else:
        text = str(node.get("type", "any"))
    return text + (" or null" if nullable else "")


def _bounds(node: Schema) -> str:
    node, _ = _nullable(node)
    parts = [fmt.format(node[key]) for key, fmt in _BOUNDS if key in node]
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        parts += [f"each {p}" for p in (fmt.format(node["items"][k]) for k, fmt in _BOUNDS if k in node["items"])]
    if node.get("uniqueItems"):
        parts.append("distinct")
    return ", ".join(parts)


def _description(node: Schema) -> str:
    inner, _ = _nullable(node)
    return str(node.get("description") or inner.get("description") or "")


def _object_of(node: Schema, defs: Schema) -> tuple[Schema | None, str]:
    """The object a field holds (directly, in a list, or as map values) and the path suffix to reach it."""
    inner, _ = _nullable(node)
    if "$ref" in inner:
        return _resolve(inner, defs), "."
    if inner.get("type") == "array" and "$ref" in inner.get("items", {}):
        return _resolve(inner["items"], defs), "[]."
    extra = inner.get("additionalProperties")
    if isinstance(extra, dict) and "$ref" in extra:
        return _resolve(extra, defs), ".<key>."
    return None, ""


def field_rows(model: Schema, defs: Schema, prefix: str = "", depth: int = 0) -> list[list[str]]:
    """One row per field, nested objects flattened into dotted paths: field, type, default, bounds, what."""
    rows: list[list[str]] = []
    required = set(model.get("required", []))
    for name, node in model.get("properties", {}).items():
        default = "required" if name in required else (
            f"`{json.dumps(node['default'], ensure_ascii=False)}`" if "default" in node else "")
        rows.append([f"`{prefix}{name}`", _type(node, defs), default, _bounds(node), _description(node)])
        inner, suffix = _object_of(node, defs)
        if inner is not None and depth < 4:
            rows.extend(field_rows(inner, defs, f"{prefix}{name}{suffix}", depth + 1))
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)]


def policy_reference() -> str:
    lines = [
        "# Policy reference",
        "",
        "Generated from the pydantic models (`controlplane/policy/`) when the site is built, so it",
        "always matches the code. Every object is a document `{kind, name, spec}`; `name` is a",
        "lower-case DNS label (1–63 characters of `a-z`, `0-9`, `-`). Unknown fields are refused.",
        "Rules that span objects (a route naming a backend that does not exist) are checked when a",
        "revision is written and are described on each kind's page.",
        "",
    ]
    for kind in KINDS.values():
        schema = kind.spec.model_json_schema()
        defs = schema.get("$defs", {})
        lines += [f"## {kind.name}", "", f"API path: `/api/v1/{kind.plural}/{{name}}`.", ""]
        if schema.get("description"):
            lines += [" ".join(schema["description"].split()), ""]
        lines += [*_table(["field", "type", "default", "bounds", "what"], field_rows(schema, defs)), ""]
    return "\n".join(lines)


def _parameters(operation: Schema) -> list[str]:
    params = operation.get("parameters", [])
    if not params:
        return []
    rows = [[f"`{p['name']}`", p["in"], "yes" if p.get("required") else "no",
             _type(p.get("schema", {}), {}), _cell(p.get("description", ""))] for p in params]
    return [*_table(["parameter", "in", "required", "type", "what"], rows), ""]


def _body(operation: Schema) -> list[str]:
    body = operation.get("requestBody")
    if not body:
        return []
    out = []
    for media, content in body.get("content", {}).items():
        schema = content.get("schema", {})
        shown = schema["$ref"].rsplit("/", 1)[-1] if "$ref" in schema else json.dumps(schema, ensure_ascii=False)
        out.append(f"Request body ({media}): `{shown}`")
    return [*out, ""]


def admin_api_reference() -> str:
    doc = openapi_document()
    lines = [
        f"# Admin API reference ({doc['info']['title']}, version {doc['info']['version']})",
        "",
        "Generated from the OpenAPI document the control plane serves at `/api/v1/openapi.json`",
        "(`controlplane/admin/openapi.py`) when the site is built. Every operation needs a bearer",
        "token once tokens exist, except those marked *no token*; see [Security](../operations/security.md).",
        "Object schemas are in the [policy reference](policy.md).",
        "",
    ]
    for path, operations in sorted(doc["paths"].items()):
        for method, operation in operations.items():
            open_ = " *(no token)*" if operation.get("security") == [] else ""
            lines += [f"## `{method.upper()} {path}`", "", f"{operation.get('summary', '')}{open_}", ""]
            lines += _parameters(operation) + _body(operation)
            responses = [[f"`{code}`", r.get("description", "")] for code, r in operation.get("responses", {}).items()]
            lines += [*_table(["status", "meaning"], responses), ""]
    return "\n".join(lines)


PAGES = {POLICY_PAGE: policy_reference, ADMIN_API_PAGE: admin_api_reference}
