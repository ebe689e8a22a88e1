"""Embedded store on the standard library's sqlite3: one row per revision, survives restarts.

One process owns the file: this is the single-replica store (see controlplane/store/redis_store.py
for several replicas).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from controlplane.policy import Policy
from controlplane.store.base import AuditEntry, Conflict, Latest, Revision, StoreUnavailable, TokenExists, TokenRecord
from controlplane.store.diff import policy_diff

_SCHEMA = """
CREATE TABLE IF NOT EXISTS revisions (
    number     INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    actor      TEXT NOT NULL,
    message    TEXT NOT NULL,
    policy     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       REAL NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    message  TEXT NOT NULL,
    revision INTEGER,
    diff     TEXT
);
-- The audit log is append-only, whoever holds the file.
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
-- Content-addressed blobs (geo tables) that revisions name by digest.
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    data   BLOB NOT NULL,
    put_at REAL NOT NULL DEFAULT 0
);
-- Global token budgets: tokens used per budget window, and the usage keeper's last reading of
-- each proxy's counters (written in the same transaction as the usage they add).
CREATE TABLE IF NOT EXISTS usage (
    key    TEXT PRIMARY KEY,
    tokens INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS usage_readings (
    source  TEXT PRIMARY KEY,
    reading TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    digest     TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    created_by TEXT NOT NULL,
    expires_at REAL
);
"""

EMPTY = Revision(number=0, policy=Policy(), created_at=0.0, actor="", message="empty policy")

T = TypeVar("T")


def policy_json(policy: Policy) -> str:
    # pydantic's own encoder: a tenth of the time of model_dump and json.dumps at 1,000 routes
    return policy.model_dump_json()


def _row(row: tuple[int, float, str, str, str]) -> Revision:
    number, created_at, actor, message, policy = row
    return Revision(number, Policy.model_validate_json(policy), created_at, actor, message)


class SqliteStore:
    def __init__(self, db: sqlite3.Connection, latest: Latest) -> None:
        self._db = db
        self._latest = latest
        self._lock = asyncio.Lock()  # one statement sequence at a time on the shared connection

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)

        def connect() -> tuple[sqlite3.Connection, Revision]:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives a power cut
            db.executescript(_SCHEMA)
            if "put_at" not in {column[1] for column in db.execute("PRAGMA table_info(blobs)")}:
                # A store from before blobs were collected: its blobs count as put long ago.
                db.execute("ALTER TABLE blobs ADD COLUMN put_at REAL NOT NULL DEFAULT 0")
            row = db.execute(
                "SELECT number, created_at, actor, message, policy FROM revisions ORDER BY number DESC LIMIT 1"
            ).fetchone()
            return db, _row(row) if row else EMPTY

        db, current = await asyncio.to_thread(connect)
        return cls(db, Latest(current))

    async def _run(self, work: Callable[[], T]) -> T:
        async with self._lock:
            return await asyncio.to_thread(work)

    def _transaction(self, work: Callable[[], T]) -> T:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = work()
            self._db.execute("COMMIT")
            return result
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _audit(self, entry: AuditEntry) -> None:
        self._db.execute(
            "INSERT INTO audit (at, actor, action, message, revision, diff) VALUES (?, ?, ?, ?, ?, ?)",
            (entry.at, entry.actor, entry.action, entry.message, entry.revision,
             None if entry.diff is None else json.dumps(entry.diff)),
        )

    async def current(self) -> Revision:
        return self._latest.value

    async def commit(self, policy: Policy, *, expected: int | None, actor: str, message: str) -> Revision:
        body = policy_json(policy)

        def write() -> Revision:
            (actual,) = self._db.execute("SELECT COALESCE(MAX(number), 0) FROM revisions").fetchone()
            if expected is not None and expected != actual:
                raise Conflict(expected, actual)
            latest = self._latest.value
            # The revision in memory, when it is the newest: parsing the stored one again costs
            # tens of milliseconds at a thousand routes, and its objects are the ones the new
            # policy shares, which the diff skips.
            previous = latest if latest.number == actual else self._read(actual)
            revision = Revision(actual + 1, policy, time.time(), actor, message)
            self._db.execute(
                "INSERT INTO revisions VALUES (?, ?, ?, ?, ?)",
                (revision.number, revision.created_at, actor, message, body),
            )
            self._audit(AuditEntry(revision.created_at, actor, "commit", message, revision.number,
                                   policy_diff(previous.policy, policy)))
            return revision

        revision = await self._run(lambda: self._transaction(write))
        self._latest.publish(revision)
        return revision

    def _read(self, number: int) -> Revision:
        if number == 0:
            return EMPTY
        row = self._db.execute(
            "SELECT number, created_at, actor, message, policy FROM revisions WHERE number = ?", (number,)
        ).fetchone()
        if row is None:
            raise KeyError(number)
        return _row(row)

    async def revision(self, number: int) -> Revision:
        return await self._run(lambda: self._read(number))

    async def history(self, limit: int) -> list[Revision]:
        def read() -> list[Revision]:
            rows = self._db.execute(
                "SELECT number, created_at, actor, message, policy FROM revisions ORDER BY number DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [_row(r) for r in rows]

        return await self._run(read)

    def watch(self) -> AsyncIterator[Revision]:
        return self._latest.watch()

    async def audit(self, limit: int) -> list[AuditEntry]:
        def read() -> list[AuditEntry]:
            rows = self._db.execute(
                "SELECT at, actor, action, message, revision, diff FROM audit ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
            return [AuditEntry(at, actor, action, message, revision, None if diff is None else json.loads(diff))
                    for at, actor, action, message, revision, diff in rows]

        return await self._run(read)

    async def tokens(self) -> list[TokenRecord]:
        def read() -> list[TokenRecord]:
            rows = self._db.execute(
                "SELECT name, role, digest, created_at, created_by, expires_at FROM tokens ORDER BY name"
            ).fetchall()
            return [TokenRecord(*row) for row in rows]

        return await self._run(read)

    async def add_token(self, token: TokenRecord) -> None:
        def write() -> None:
            try:
                self._db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?)",
                                 (token.name, token.role, token.digest, token.created_at, token.created_by,
                                  token.expires_at))
            except sqlite3.IntegrityError:
                raise TokenExists(token.name) from None
            self._audit(AuditEntry(token.created_at, token.created_by, "token.create",
                                   f"token {token.name} ({token.role})"))

        await self._run(lambda: self._transaction(write))

    async def delete_token(self, name: str, *, actor: str) -> bool:
        def write() -> bool:
            deleted = self._db.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount > 0
            if deleted:
                self._audit(AuditEntry(time.time(), actor, "token.delete", f"token {name}"))
            return deleted

        return await self._run(lambda: self._transaction(write))

    async def put_blob(self, digest: str, data: bytes) -> None:
        await self._run(lambda: self._db.execute(
            "INSERT INTO blobs (digest, data, put_at) VALUES (?, ?, ?) "
            "ON CONFLICT (digest) DO UPDATE SET put_at = excluded.put_at", (digest, data, time.time())))

    async def blobs(self) -> dict[str, float]:
        rows = await self._run(lambda: self._db.execute("SELECT digest, put_at FROM blobs").fetchall())
        return {digest: put_at for digest, put_at in rows}

    async def delete_blob(self, digest: str, *, put_before: float) -> bool:
        cursor = await self._run(lambda: self._db.execute("DELETE FROM blobs WHERE digest = ? AND put_at < ?",
                                                          (digest, put_before)))
        return cursor.rowcount > 0

    async def get_blob(self, digest: str) -> bytes | None:
        row = await self._run(lambda: self._db.execute("SELECT data FROM blobs WHERE digest = ?",
                                                       (digest,)).fetchone())
        return None if row is None else bytes(row[0])

    async def add_usage(self, deltas: Mapping[str, int], readings: Mapping[str, str]) -> None:
        def write() -> None:
            self._db.executemany("INSERT INTO usage (key, tokens) VALUES (?, ?) "
                                 "ON CONFLICT (key) DO UPDATE SET tokens = tokens + excluded.tokens",
                                 sorted(deltas.items()))
            self._db.executemany("INSERT INTO usage_readings (source, reading) VALUES (?, ?) "
                                 "ON CONFLICT (source) DO UPDATE SET reading = excluded.reading",
                                 sorted(readings.items()))

        await self._run(lambda: self._transaction(write))

    async def usage(self, keys: Sequence[str]) -> dict[str, int]:
        def read() -> dict[str, int]:
            found = dict(self._db.execute(f"SELECT key, tokens FROM usage WHERE key IN ({','.join('?' * len(keys))})",
                                          list(keys)).fetchall()) if keys else {}
            return {key: int(found.get(key, 0)) for key in keys}

        return await self._run(read)

    async def readings(self) -> dict[str, str]:
        rows = await self._run(lambda: self._db.execute("SELECT source, reading FROM usage_readings").fetchall())
        return {source: reading for source, reading in rows}

    async def ping(self) -> None:
        try:
            await self._run(lambda: self._db.execute("SELECT 1").fetchone())
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite does not answer: {exc}") from exc

    async def close(self) -> None:
        await self._run(self._db.close)

