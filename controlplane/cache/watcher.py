"""What the xDS server needs of a cache, and all it knows of one (as go-control-plane's
ConfigWatcher): a proxy's snapshot, now and after every change."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from controlplane.cache.snapshot import Snapshot
from controlplane.groups import ProxyGroup


class Signal(Protocol):
    """What a watcher is woken through (asyncio.Event is one)."""

    def set(self) -> None: ...


class ConfigWatcher(Protocol):
    def watching(self, group: ProxyGroup, node: str,
                 changed: Signal) -> AbstractContextManager[Callable[[], Snapshot | None]]:
        """While the block runs, `changed` is set on every change to the snapshot of `node` (a
        proxy of `group`); the block gets a function answering that snapshot (None until there is one)."""
        ...
