"""The shared store of several control-plane replicas, in one Redis (redis-py asyncio, decoded
replies: every value is a str, hence the casts below).

Keys (one Redis database per sluice installation):
  sluice:revision        the current revision number
  sluice:rev:N           revision N: {created_at, actor, message, policy} as JSON, never rewritten
  sluice:audit           the audit log: a stream, only ever appended to
  sluice:tokens          admin API tokens: name -> {role, digest, ...} as JSON
  sluice:blob:DIGEST     a content-addressed blob (a geo table), base64: the client decodes replies
  sluice:blob-times      when each blob was last put: a sorted set, digest -> Unix time
  sluice:usage:KEY       tokens used in a global budget's window (an integer, INCRBY)
  sluice:usage-readings  the usage keeper's last reading of each proxy: source -> reading
and the pub/sub channel `sluice:revisions`, on which each commit announces its number.

A commit is one Lua script: compare the current number, write the revision, bump the number,
append the audit entry and announce it. Redis runs scripts atomically and logs their effects
to the AOF as one transaction, so a commit is all there or not at all, even after a crash.

Every replica follows the channel and also reads the current number every `poll_s`, so a
notification missed while disconnected costs at most one poll.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from controlplane.policy import Policy
from controlplane.store.announcements import announcements
from controlplane.store.base import AuditEntry, Conflict, Latest, Revision, StoreUnavailable, TokenExists, TokenRecord
from controlplane.store.diff import policy_diff
from controlplane.store.durability import durability_warnings
from controlplane.store.redis_client import bounded, connect, where
from controlplane.store.sqlite import EMPTY

log = logging.getLogger(__name__)

T = TypeVar("T")

CURRENT = "sluice:revision"
AUDIT = "sluice:audit"
TOKENS = "sluice:tokens"
CHANNEL = "sluice:revisions"
BLOB = "sluice:blob:"
BLOB_TIMES = "sluice:blob-times"
USAGE = "sluice:usage:"
USAGE_READINGS = "sluice:usage-readings"

_COMMIT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then return {0, current} end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], current + 1)
redis.call('XADD', KEYS[3], '*', 'entry', ARGV[3])
redis.call('PUBLISH', ARGV[4], current + 1)
return {1, current + 1}
"""
# Deletes the blob (KEYS[1]) unless it was put (KEYS[2] score) at or after ARGV[2].
_DELETE_BLOB = """
local put_at = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
if put_at >= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
"""
_ADD_TOKEN = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'entry', ARGV[3])
return 1
"""
_DELETE_TOKEN = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'entry', ARGV[2])
return 1
"""


def revision_key(number: int) -> str:
    return f"sluice:rev:{number}"


def _entry(entry: AuditEntry) -> str:
    return json.dumps(entry.view(), separators=(",", ":"))


def _revision(number: int, raw: str) -> Revision:
    body = json.loads(raw)
    return Revision(number, Policy.model_validate(body["policy"]), body["created_at"], body["actor"],
                    body["message"])


class RedisStore:
    def __init__(self, client: Redis, latest: Latest, where: str, poll_s: float) -> None:
        self._client = client
        self._latest = latest
        self._where = where
        self._poll_s = poll_s
        self._commit = client.register_script(_COMMIT)
        self._add_token = client.register_script(_ADD_TOKEN)
        self._delete_token = client.register_script(_DELETE_TOKEN)
        self._delete_blob = client.register_script(_DELETE_BLOB)
        self._follower: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, *, poll_s: float = 0.5) -> RedisStore:
        client = connect(url)
        store = cls(client, Latest(EMPTY), where(url), poll_s)
        try:
            for warning in await store._call(durability_warnings(client)):
                log.warning("%s: %s", store._where, warning)
            store._latest.publish(await store._load_current())
        except StoreUnavailable:
            await client.aclose()
            raise
        store._follower = asyncio.create_task(store._follow())
        return store

    async def _call(self, operation: Awaitable[T]) -> T:
        try:
            return await bounded(operation)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"cannot reach Redis at {self._where}: {exc}") from exc

    async def _load_current(self) -> Revision:
        number = int(await self._call(self._client.get(CURRENT)) or 0)
        return await self.revision(number)

    async def _catch_up(self) -> None:
        latest = self._latest.value.number
        number = int(await self._call(self._client.get(CURRENT)) or 0)
        if number > latest:
            self._latest.publish(await self.revision(number))
        elif number < latest:
            log.error("Redis at %s is at revision %d, behind revision %d this replica loaded: it lost "
                      "acknowledged writes (does it run with appendonly yes?)", self._where, number, latest)

    async def _follow(self) -> None:
        """Follow other replicas' commits, and reconnect on our own after Redis goes away."""
        lost_at: float | None = None
        while True:
            try:
                async with contextlib.aclosing(announcements(self._client, CHANNEL, self._poll_s)) as wakeups:
                    async for _ in wakeups:
                        await self._catch_up()
                        if lost_at is not None:
                            log.warning("Redis at %s is back after %.1f s; at revision %d", self._where,
                                        time.monotonic() - lost_at, self._latest.value.number)
                            lost_at = None
            except (StoreUnavailable, RedisError, OSError) as exc:
                if lost_at is None:
                    lost_at = time.monotonic()
                    log.warning("cannot reach Redis at %s (%s); writes fail until it is back, revision %d "
                                "keeps serving", self._where, exc, self._latest.value.number)
                await asyncio.sleep(self._poll_s)

    async def current(self) -> Revision:
        return self._latest.value

    async def commit(self, policy: Policy, *, expected: int | None, actor: str, message: str) -> Revision:
        body = policy.model_dump_json()  # pydantic's own encoder: a tenth of the time of json.dumps
        while True:
            base = self._latest.value
            if expected is not None and expected != base.number:
                try:
                    base = await self.revision(expected)  # the diff is against the revision replaced
                except KeyError:
                    raise Conflict(expected, base.number) from None
            revision = Revision(base.number + 1, policy, time.time(), actor, message)
            entry = AuditEntry(revision.created_at, actor, "commit", message, revision.number,
                               policy_diff(base.policy, policy))
            head = json.dumps({"created_at": revision.created_at, "actor": actor, "message": message},
                              separators=(",", ":"))
            raw = f'{head[:-1]},"policy":{body}}}'
            done, actual = await self._call(self._commit(
                keys=[CURRENT, revision_key(revision.number), AUDIT],
                args=[base.number, raw, _entry(entry), CHANNEL]))
            if done:
                self._latest.publish(revision)
                return revision
            # Another replica committed first: load its revision so that a retry builds on it.
            await self._catch_up()
            if expected is not None:
                raise Conflict(expected, int(actual))

    async def revision(self, number: int) -> Revision:
        if number == 0:
            return EMPTY
        raw = cast(str | None, await self._call(self._client.get(revision_key(number))))
        if raw is None:
            raise KeyError(number)
        return _revision(number, raw)

    async def history(self, limit: int) -> list[Revision]:
        newest = int(await self._call(self._client.get(CURRENT)) or 0)
        numbers = list(range(newest, max(0, newest - limit), -1))
        if not numbers:
            return []
        raws = cast(list[str | None], await self._call(self._client.mget([revision_key(n) for n in numbers])))
        return [_revision(n, raw) for n, raw in zip(numbers, raws, strict=True) if raw is not None]

    def watch(self) -> AsyncIterator[Revision]:
        return self._latest.watch()

    async def audit(self, limit: int) -> list[AuditEntry]:
        entries = cast(list[tuple[str, dict[str, str]]],
                       await self._call(self._client.xrevrange(AUDIT, count=limit)))
        return [AuditEntry(**json.loads(fields["entry"])) for _, fields in entries]

    async def tokens(self) -> list[TokenRecord]:
        raw = cast(dict[str, str], await self._call(self._client.hgetall(TOKENS)))
        return sorted((TokenRecord(**json.loads(v)) for v in raw.values()), key=lambda t: t.name)

    async def add_token(self, token: TokenRecord) -> None:
        record: dict[str, Any] = {"name": token.name, "role": token.role, "digest": token.digest,
                                  "created_at": token.created_at, "created_by": token.created_by,
                                  "expires_at": token.expires_at}
        entry = AuditEntry(token.created_at, token.created_by, "token.create", f"token {token.name} ({token.role})")
        added = await self._call(self._add_token(keys=[TOKENS, AUDIT],
                                                 args=[token.name, json.dumps(record), _entry(entry)]))
        if not added:
            raise TokenExists(token.name)

    async def delete_token(self, name: str, *, actor: str) -> bool:
        entry = AuditEntry(time.time(), actor, "token.delete", f"token {name}")
        return bool(await self._call(self._delete_token(keys=[TOKENS, AUDIT], args=[name, _entry(entry)])))

    async def put_blob(self, digest: str, data: bytes) -> None:
        async def put() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(BLOB + digest, base64.b64encode(data).decode(), nx=True)
                pipe.zadd(BLOB_TIMES, {digest: time.time()})
                await pipe.execute()

        await self._call(put())

    async def get_blob(self, digest: str) -> bytes | None:
        raw = await self._call(self._client.get(BLOB + digest))
        return None if raw is None else base64.b64decode(raw)

    async def blobs(self) -> dict[str, float]:
        async def read() -> dict[str, float]:
            digests = [key.removeprefix(BLOB) async for key in self._client.scan_iter(match=BLOB + "*", count=100)]
            async with self._client.pipeline(transaction=False) as pipe:
                for digest in digests:
                    pipe.zscore(BLOB_TIMES, digest)
                times: list[float | None] = await pipe.execute()
            # A blob from before blobs were collected has no time: it counts as put long ago.
            return {digest: put_at or 0.0 for digest, put_at in zip(digests, times, strict=True)}

        return await self._call(read())

    async def delete_blob(self, digest: str, *, put_before: float) -> bool:
        return bool(await self._call(self._delete_blob(keys=[BLOB + digest, BLOB_TIMES], args=[digest, put_before])))

    async def add_usage(self, deltas: Mapping[str, int], readings: Mapping[str, str]) -> None:
        async def write() -> None:
            # MULTI/EXEC: applied all together or not at all, and logged to the AOF as one.
            async with self._client.pipeline(transaction=True) as pipe:
                for key, delta in sorted(deltas.items()):
                    pipe.incrby(USAGE + key, delta)
                if readings:
                    pipe.hset(USAGE_READINGS, mapping=cast(Any, dict(readings)))  # redis-py's Mapping type is invariant
                await pipe.execute()

        await self._call(write())

    async def usage(self, keys: Sequence[str]) -> dict[str, int]:
        if not keys:
            return {}
        values = await self._call(self._client.mget([USAGE + key for key in keys]))
        return {key: int(value or 0) for key, value in zip(keys, values, strict=True)}

    async def readings(self) -> dict[str, str]:
        return cast(dict[str, str], await self._call(self._client.hgetall(USAGE_READINGS)))

    async def ping(self) -> None:
        if self._follower is not None and self._follower.done():
            # It runs for the life of the store: ended, this replica no longer sees other replicas' writes.
            raise StoreUnavailable(f"following Redis at {self._where} stopped: "
                                   f"{self._follower.exception() if not self._follower.cancelled() else 'cancelled'}")
        await self._call(self._client.ping())

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        await self._client.aclose()
