"""Which role each admin API request needs, checked before any handler runs.

viewer: every read (GET). operator: every change of policy (and canaries). admin: tokens.
/healthz, /readyz, the OpenAPI document and the console's static pages (no data) are public.
Handlers ask `actor(request)` (controlplane/web/principal.py) whom to record.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from controlplane.auth import Authenticator, Unauthorized, role_allows
from controlplane.ui.paths import is_console_page
from controlplane.web.errors import error
from controlplane.web.principal import PRINCIPAL

PUBLIC = frozenset({"/healthz", "/readyz", "/api/v1/openapi.json"})


def needed_role(request: web.Request) -> str | None:
    if request.path in PUBLIC or is_console_page(request.path):
        return None
    if request.path == "/api/v1/tokens" or request.path.startswith("/api/v1/tokens/"):
        return "admin"
    if request.method in ("GET", "HEAD"):
        return "viewer"
    return "operator"


def _loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:  # a Unix socket peer
        return False


def _unauthorized(message: str) -> web.Response:
    response = error(401, message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="sluice", error="invalid_token"'
    return response


def auth_middleware(authenticator: Authenticator) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        needed = needed_role(request)
        if needed is None or authenticator.mode == "off":
            return await handler(request)
        if not authenticator.enforcing:
            if _loopback(request.remote):
                return await handler(request)
            return _unauthorized("no admin API token exists yet, so only loopback clients are served; "
                                 "create one with `sluice token create --role admin --store URL`")
        try:
            principal = authenticator.authenticate(request.headers.get("Authorization"))
        except Unauthorized as exc:
            return _unauthorized(str(exc))
        if not role_allows(principal.role, needed):
            return error(403, f"token {principal.name!r} has role {principal.role}; this needs {needed}")
        request[PRINCIPAL] = principal
        return await handler(request)

    return check
