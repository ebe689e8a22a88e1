"""API keys of tenants: create (the key is in the answer, once; only its SHA-256 is stored),
list (ids only), revoke. Each change is a policy revision like any other write, so the edge
has it as soon as the revision reaches it."""

from __future__ import annotations

import secrets

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from controlplane.policy import InvalidPolicy, Policy, Problem
from controlplane.policy.ai import ApiKey, Tenant, key_digest
from controlplane.policy.model import Name
from controlplane.store import Store
from controlplane.web.errors import error
from controlplane.web.writes import Written, commit_change, json_body

KEY_PREFIX = "sk-sluice-"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)  # 192 random bits


class ApiKeysApi:
    def __init__(self, store: Store, written: Written) -> None:
        self._store = store
        self._written = written

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/tenants/{name}/keys", self.list_keys),
            web.post("/api/v1/tenants/{name}/keys", self.create),
            web.delete("/api/v1/tenants/{name}/keys/{id}", self.revoke),
        ]

    async def list_keys(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        tenant = (await self._store.current()).policy.tenants.get(name)
        if tenant is None:
            return error(404, f"Tenant {name!r} not found")
        return web.json_response({"tenant": name, "keys": [{"id": k.id} for k in tenant.keys]})

    async def create(self, request: web.Request) -> web.Response:
        """Adds a key to the tenant, creating the tenant if it does not exist."""
        name = request.match_info["name"]
        try:
            TypeAdapter(Name).validate_python(name)
        except ValidationError:
            raise InvalidPolicy([Problem(loc="name", msg="a tenant's name is lower-case letters, digits and '-', "
                                                         "1-63 characters")]) from None
        body = await json_body(request) if request.can_read_body else {}
        if not isinstance(body, dict) or not isinstance(body.get("id", ""), str):
            return error(422, "expected an object {id}: the key's id, optional")
        key = new_key()

        def add(policy: Policy) -> Policy:
            tenant = policy.tenants.get(name, Tenant())
            taken = {k.id for k in tenant.keys}
            key_id = body.get("id") or next(f"key-{i}" for i in range(1, len(taken) + 2) if f"key-{i}" not in taken)
            if key_id in taken:
                raise InvalidPolicy([Problem(loc="id", msg=f"tenant {name!r} already has a key {key_id!r}")])
            try:
                keys = [*tenant.keys, ApiKey(id=key_id, sha256=key_digest(key))]
                updated = Tenant.model_validate({"keys": [k.model_dump() for k in keys]})
            except ValueError as exc:
                raise InvalidPolicy([Problem(loc="id", msg=str(exc))]) from None
            return policy.model_copy(update={"tenants": {**policy.tenants, name: updated}})

        response = await commit_change(self._store, self._written, request, add, f"create an API key of tenant {name}")
        current = await self._store.current()
        created = next(k for k in current.policy.tenants[name].keys if k.sha256 == key_digest(key))
        return web.json_response({"tenant": name, "id": created.id, "key": key, "revision": current.number},
                                 status=201 if response.status == 200 else response.status)

    async def revoke(self, request: web.Request) -> web.Response:
        name, key_id = request.match_info["name"], request.match_info["id"]
        tenant = (await self._store.current()).policy.tenants.get(name)
        if tenant is None or key_id not in {k.id for k in tenant.keys}:
            return error(404, f"tenant {name!r} has no key {key_id!r}")

        def remove(policy: Policy) -> Policy:
            current = policy.tenants.get(name, Tenant())
            kept = Tenant(keys=[k for k in current.keys if k.id != key_id])
            return policy.model_copy(update={"tenants": {**policy.tenants, name: kept}})

        return await commit_change(self._store, self._written, request, remove,
                                   f"revoke API key {key_id} of tenant {name}")
