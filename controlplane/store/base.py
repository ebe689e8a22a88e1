"""The store interface: numbered revisions of the whole policy, with optimistic concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from controlplane.policy import Policy


@dataclass(frozen=True)
class Revision:
    number: int  # 0 is the empty policy a new store starts with
    policy: Policy
    created_at: float
    actor: str
    message: str


class Conflict(Exception):
    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"revision is {actual}, not {expected}: re-read and retry")
        self.expected = expected
        self.actual = actual


class StoreUnavailable(Exception):
    """The backing store cannot be reached; writes must fail fast, reads use the last revision."""


class Store(Protocol):
    async def current(self) -> Revision: ...

    async def commit(self, policy: Policy, *, expected: int | None, actor: str, message: str) -> Revision:
        """Store `policy` as the next revision; `expected` (when given) must be the current number."""
        ...

    async def revision(self, number: int) -> Revision: ...

    async def history(self, limit: int) -> list[Revision]: ...

    def watch(self) -> AsyncIterator[Revision]:
        """The current revision, then every later one as it is committed (skipping to the newest)."""
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
