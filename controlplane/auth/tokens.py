"""Admin API tokens: a random secret shown once, stored as its sha256 digest.

A token is 256 random bits, so a plain (unsalted, fast) hash is enough: nothing short of
guessing the secret itself finds a preimage, and the store never holds anything replayable.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from controlplane.store import TokenRecord

# Each role can do what the roles before it can.
ROLES = ("viewer", "operator", "admin")
PREFIX = "sluice_"
NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62})$")


def role_allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue(name: str, role: str, *, created_by: str, expires_in_s: float | None = None) -> tuple[str, TokenRecord]:
    """A new token: the secret (to hand over once) and the record to store."""
    if not NAME.match(name):
        raise ValueError(f"token name {name!r}: use 1-63 lower-case letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if expires_in_s is not None and not 0 < expires_in_s < 100 * 365 * 86400:
        raise ValueError("a token expires between now and a hundred years from now (expires_in_s in seconds)")
    secret = PREFIX + secrets.token_urlsafe(32)
    now = time.time()
    return secret, TokenRecord(name, role, digest(secret), now, created_by,
                               None if expires_in_s is None else now + expires_in_s)
