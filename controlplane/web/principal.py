"""Who made a request: the token the auth middleware (controlplane/admin/auth.py) proved, kept
on the request under PRINCIPAL, and the name recorded in the audit log."""

from __future__ import annotations

from aiohttp import web

from controlplane.auth import Principal

PRINCIPAL = "sluice.principal"


def actor(request: web.Request) -> str:
    """Who made this change, for the audit log: the token's name when tokens are in force;
    otherwise whatever the client calls itself (X-Sluice-Actor), as nothing was proven."""
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is not None:
        return principal.name
    return request.headers.get("X-Sluice-Actor", "anonymous")[:64]
