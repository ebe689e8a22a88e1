"""The store interface: numbered revisions of the whole policy with optimistic concurrency, an
append-only audit log, and the admin API's tokens (stored as digests only)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from controlplane.policy import Policy


@dataclass(frozen=True)
class Revision:
    number: int  # 0 is the empty policy a new store starts with
    policy: Policy
    created_at: float
    actor: str
    message: str


@dataclass(frozen=True)
class AuditEntry:
    """One accepted change: who, when, what, and for policy changes the field-level diff."""

    at: float
    actor: str
    action: str  # "commit", "token.create", "token.delete"
    message: str
    revision: int | None = None  # the revision a commit created
    diff: list[dict[str, Any]] | None = None  # controlplane.store.diff.policy_diff of the commit

    def view(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TokenRecord:
    """An admin API token as stored: the sha256 digest of the secret, never the secret."""

    name: str
    role: str
    digest: str
    created_at: float
    created_by: str
    expires_at: float | None = None

    def view(self) -> dict[str, Any]:
        """What the API shows about a token: everything but the digest."""
        return {k: v for k, v in asdict(self).items() if k != "digest"}


class Conflict(Exception):
    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"revision is {actual}, not {expected}: re-read and retry")
        self.expected = expected
        self.actual = actual


class StoreUnavailable(Exception):
    """The backing store cannot be reached; writes must fail fast, reads use the last revision."""


class TokenExists(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"a token named {name!r} already exists")


class Store(Protocol):
    async def current(self) -> Revision:
        """The last revision loaded: answered from memory, so it works while the backend is down."""
        ...

    async def commit(self, policy: Policy, *, expected: int | None, actor: str, message: str) -> Revision:
        """Store `policy` as the next revision and its audit entry, atomically; `expected` (when
        given) must be the current number, else Conflict."""
        ...

    async def revision(self, number: int) -> Revision:
        """KeyError when there is no such revision."""
        ...

    async def history(self, limit: int) -> list[Revision]:
        """The newest `limit` revisions, newest first."""
        ...

    def watch(self) -> AsyncIterator[Revision]:
        """The current revision, then every later one as it is committed by any replica
        (skipping to the newest)."""
        ...

    async def audit(self, limit: int) -> list[AuditEntry]:
        """The newest `limit` audit entries, newest first."""
        ...

    async def tokens(self) -> list[TokenRecord]: ...

    async def add_token(self, token: TokenRecord) -> None:
        """TokenExists when the name is taken. Audited, as done by `token.created_by`."""
        ...

    async def delete_token(self, name: str, *, actor: str) -> bool:
        """False when there was no such token. Audited."""
        ...

    async def put_blob(self, digest: str, data: bytes) -> None:
        """Keep `data` under its content digest (a geo table: too large for every revision to
        copy, so the policy names it by digest). Writing an existing digest changes only the
        time it was last put, from which the collector's grace counts."""
        ...

    async def blobs(self) -> dict[str, float]:
        """Every blob's digest, and when it was last put."""
        ...

    async def delete_blob(self, digest: str, *, put_before: float) -> bool:
        """Delete the blob unless it was put at or after `put_before` (so an upload racing the
        collector keeps its blob). Whether it was deleted."""
        ...

    async def get_blob(self, digest: str) -> bytes | None:
        """The blob stored under `digest`, None when there is none."""
        ...

    async def add_usage(self, deltas: Mapping[str, int], readings: Mapping[str, str]) -> None:
        """Add each delta to its usage counter (tokens of a global budget's window, by key) and
        replace the named readings (the usage keeper's last reading of each proxy), in one
        atomic write: a usage delta is stored together with the reading it came from."""
        ...

    async def usage(self, keys: Sequence[str]) -> dict[str, int]:
        """The named usage counters; 0 for one never added to."""
        ...

    async def readings(self) -> dict[str, str]:
        """Every reading stored by add_usage."""
        ...

    async def ping(self) -> None:
        """Reach the backing store now (StoreUnavailable when it does not answer), for readiness."""
        ...

    async def close(self) -> None: ...


class Latest:
    """Hands the newest revision to any number of watchers without queueing stale ones."""

    def __init__(self, first: Revision) -> None:
        self._value = first
        self._changed = asyncio.Event()

    @property
    def value(self) -> Revision:
        return self._value

    def publish(self, revision: Revision) -> None:
        if revision.number > self._value.number:
            self._value = revision
            self._changed.set()
            self._changed = asyncio.Event()

    async def watch(self) -> AsyncIterator[Revision]:
        seen = -1
        while True:
            current = self._value
            if current.number != seen:
                seen = current.number
                yield current
            else:
                await self._changed.wait()
