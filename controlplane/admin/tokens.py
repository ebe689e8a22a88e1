"""Token management for admins: list, create (the secret is in the answer, once), revoke."""

from __future__ import annotations

from aiohttp import web

from controlplane.auth import Authenticator, issue
from controlplane.store import Store, TokenExists
from controlplane.web.errors import error
from controlplane.web.principal import actor
from controlplane.web.writes import json_body


class TokensApi:
    def __init__(self, store: Store, authenticator: Authenticator) -> None:
        self._store = store
        self._authenticator = authenticator

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/tokens", self.list_tokens),
            web.post("/api/v1/tokens", self.create),
            web.delete("/api/v1/tokens/{name}", self.delete),
        ]

    async def list_tokens(self, _: web.Request) -> web.Response:
        return web.json_response({"tokens": [t.view() for t in await self._store.tokens()]})

    async def create(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        if not isinstance(body, dict):
            return error(422, "expected an object {name, role, expires_in_s}")
        name, role, expires_in_s = body.get("name"), body.get("role"), body.get("expires_in_s")
        if not isinstance(name, str) or not isinstance(role, str):
            return error(422, "name and role are required strings")
        if expires_in_s is not None and (isinstance(expires_in_s, bool) or not isinstance(expires_in_s, int | float)):
            return error(422, "expires_in_s must be a number of seconds")
        try:
            secret, record = issue(name, role, created_by=actor(request), expires_in_s=expires_in_s)
        except ValueError as exc:
            return error(422, str(exc))
        try:
            await self._store.add_token(record)
        except TokenExists as exc:
            return error(409, str(exc))
        await self._authenticator.load()
        return web.json_response({**record.view(), "token": secret}, status=201)

    async def delete(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        tokens = await self._store.tokens()
        admins = [t.name for t in tokens if t.role == "admin"]
        if admins == [name] and len(tokens) > 1:
            return error(409, f"{name!r} is the last admin token: create another admin token first, "
                              "or nobody could manage the remaining tokens")
        if not await self._store.delete_token(name, actor=actor(request)):
            return error(404, f"token {name!r} not found")
        await self._authenticator.load()
        return web.json_response({"deleted": name})
