from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from controlplane.store.base import Store
from controlplane.store.sqlite import SqliteStore


async def open_store(url: str) -> Store:
    """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db`."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
        if not path:
            raise ValueError(f"store URL {url!r} names no database file")
        return await SqliteStore.open(Path(path))
    raise ValueError(f"unsupported store URL {url!r}: expected sqlite:///PATH")
