"""Checks bearer tokens against the stored digests, from a table kept in memory.

The table is reloaded from the store every `refresh_s` (and at once after a local change),
so a token created or revoked through any replica works everywhere within that time, and
requests are still authenticated while the store is unreachable (with the last table).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from controlplane.auth.tokens import digest
from controlplane.store import Store, StoreUnavailable, TokenRecord

log = logging.getLogger(__name__)

# auto: tokens are required once at least one exists (until then only loopback is served);
# on: always required; off: never (the API trusts its network).
AuthMode = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class Principal:
    name: str  # the token's name: what the audit log records as the actor
    role: str


class Unauthorized(Exception):
    """The request's credentials are missing, unknown or expired (HTTP 401)."""


class Authenticator:
    def __init__(self, store: Store, mode: AuthMode, *, refresh_s: float = 1.0) -> None:
        self.mode = mode
        self._store = store
        self._refresh_s = refresh_s
        self._by_digest: dict[str, TokenRecord] = {}

    async def load(self) -> None:
        self._by_digest = {t.digest: t for t in await self._store.tokens()}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.load()
            except StoreUnavailable as exc:
                log.debug("tokens not reloaded: %s", exc)

    @property
    def enforcing(self) -> bool:
        return self.mode == "on" or (self.mode == "auto" and bool(self._by_digest))

    def authenticate(self, authorization: str | None) -> Principal:
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized("missing bearer token: send the header Authorization: Bearer TOKEN")
        token = self._by_digest.get(digest(secret.strip()))
        if token is None:
            raise Unauthorized("unknown or revoked token")
        if token.expires_at is not None and token.expires_at <= time.time():
            when = datetime.fromtimestamp(token.expires_at, UTC).isoformat(timespec="seconds")
            raise Unauthorized(f"token {token.name!r} expired at {when}")
        return Principal(token.name, token.role)
