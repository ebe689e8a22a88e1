"""What the xDS server needs of a cache, and all it knows of one (as go-control-plane's
ConfigWatcher): a proxy's snapshot, now and after every change."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from controlplane.cache.snapshot import Snapshot
from controlplane.groups import ProxyGroup


class ConfigWatcher(Protocol):
    def watch(self, group: ProxyGroup, node: str) -> AsyncIterator[Snapshot]:
        """The snapshot of `node` (a proxy of `group`) once there is one, then after every change."""
        ...
