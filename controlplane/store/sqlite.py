"""Embedded store on the standard library's sqlite3: one row per revision, survives restarts."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

from controlplane.policy import Policy
from controlplane.store.base import Conflict, Latest, Revision

_SCHEMA = """
CREATE TABLE IF NOT EXISTS revisions (
    number     INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    actor      TEXT NOT NULL,
    message    TEXT NOT NULL,
    policy     TEXT NOT NULL
);
"""

EMPTY = Revision(number=0, policy=Policy(), created_at=0.0, actor="", message="empty policy")


def _row(row: tuple[int, float, str, str, str]) -> Revision:
    number, created_at, actor, message, policy = row
    return Revision(number, Policy.model_validate_json(policy), created_at, actor, message)


class SqliteStore:
    def __init__(self, db: sqlite3.Connection, latest: Latest) -> None:
        self._db = db
        self._latest = latest
        self._lock = asyncio.Lock()  # one writer at a time within this process

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)

        def connect() -> tuple[sqlite3.Connection, Revision]:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives a power cut
            db.executescript(_SCHEMA)
            row = db.execute(
                "SELECT number, created_at, actor, message, policy FROM revisions ORDER BY number DESC LIMIT 1"
            ).fetchone()
            return db, _row(row) if row else EMPTY

        db, current = await asyncio.to_thread(connect)
        return cls(db, Latest(current))

    async def current(self) -> Revision:
        return self._latest.value

    async def commit(self, policy: Policy, *, expected: int | None, actor: str, message: str) -> Revision:
        body = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

        def write() -> Revision:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (actual,) = self._db.execute("SELECT COALESCE(MAX(number), 0) FROM revisions").fetchone()
                if expected is not None and expected != actual:
                    raise Conflict(expected, actual)
                revision = Revision(actual + 1, policy, time.time(), actor, message)
                self._db.execute(
                    "INSERT INTO revisions VALUES (?, ?, ?, ?, ?)",
                    (revision.number, revision.created_at, actor, message, body),
                )
                self._db.execute("COMMIT")
                return revision
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

        async with self._lock:
            revision = await asyncio.to_thread(write)
        self._latest.publish(revision)
        return revision

    async def revision(self, number: int) -> Revision:
        if number == 0:
            return EMPTY

        def read() -> Revision:
            row = self._db.execute(
                "SELECT number, created_at, actor, message, policy FROM revisions WHERE number = ?", (number,)
            ).fetchone()
            if row is None:
                raise KeyError(number)
            return _row(row)

        return await asyncio.to_thread(read)

    async def history(self, limit: int) -> list[Revision]:
        def read() -> list[Revision]:
            rows = self._db.execute(
                "SELECT number, created_at, actor, message, policy FROM revisions ORDER BY number DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [_row(r) for r in rows]

        return await asyncio.to_thread(read)

    def watch(self) -> AsyncIterator[Revision]:
        return self._latest.watch()

    async def close(self) -> None:
        await asyncio.to_thread(self._db.close)
