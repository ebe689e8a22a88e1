from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from controlplane.store.base import Store
from controlplane.store.redis_store import RedisStore
from controlplane.store.sqlite import SqliteStore


async def open_store(url: str, *, poll_s: float = 0.5) -> Store:
    """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db` (one replica), or
    `redis://[:PASSWORD@]HOST:PORT/DB` (`rediss://` for TLS): several replicas share it.

    `poll_s`: how often a Redis replica checks for revisions it was not told about."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
        if not path:
            raise ValueError(f"store URL {url!r} names no database file")
        return await SqliteStore.open(Path(path))
    if parsed.scheme in ("redis", "rediss"):
        if not parsed.hostname:
            raise ValueError("store URL names no Redis host: expected redis://HOST:PORT/DB")
        return await RedisStore.open(url, poll_s=poll_s)
    raise ValueError(f"unsupported store URL {parsed.scheme}://…: expected sqlite:///PATH or redis://HOST:PORT/DB")


def redacted(url: str) -> str:
    """The store URL without its password, for logs."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@")).geturl()
