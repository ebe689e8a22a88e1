"""The snapshot cache: the latest snapshot per proxy group, and a way to wait for the next."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from controlplane.cache.snapshot import Snapshot


class SnapshotCache:
    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._changed: dict[str, asyncio.Event] = {}

    def get(self, group: str) -> Snapshot | None:
        return self._snapshots.get(group)

    def groups(self) -> list[str]:
        return list(self._snapshots)

    def set(self, group: str, snapshot: Snapshot) -> None:
        self._snapshots[group] = snapshot
        event = self._changed.pop(group, None)
        if event is not None:
            event.set()

    async def watch(self, group: str) -> AsyncIterator[Snapshot]:
        """Yields the group's snapshot now (once there is one) and after every change."""
        last: Snapshot | None = None
        while True:
            snapshot = self._snapshots.get(group)
            if snapshot is not None and snapshot is not last:
                last = snapshot
                yield snapshot
                continue
            await self._changed.setdefault(group, asyncio.Event()).wait()
