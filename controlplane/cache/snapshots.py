"""The snapshot cache: the latest snapshot per proxy group, per-proxy overrides of single
types (a proxy's share of a global rate limit), and a way to wait for the next change.

A change wakes only the streams it concerns (those of the group, or of the one proxy), so a
proxy's new rate-limit share does not wake a thousand others. Whoever builds snapshots learns
here which groups are wanted (`on_groups`): the cache itself knows nothing of where they come
from. A group's snapshot is dropped when its last watcher leaves, so groups that come and go
(sidecars on ephemeral ports) leave nothing behind."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from controlplane.cache.snapshot import Snapshot, TypeSnapshot
from controlplane.cache.watcher import Signal
from controlplane.groups import ProxyGroup


class SnapshotCache:
    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._overrides: dict[str, dict[str, TypeSnapshot]] = {}
        self._waiting: dict[tuple[str, str], set[Signal]] = {}  # ("group"|"node", name) -> watchers
        self._joined: list[Callable[[ProxyGroup], None]] = []
        self._left: list[Callable[[ProxyGroup], None]] = []

    def on_groups(self, joined: Callable[[ProxyGroup], None], left: Callable[[ProxyGroup], None]) -> None:
        """Call `joined(group)` when a group without watchers gets one, before that watcher is
        answered (a snapshot set for the group meanwhile is its first answer), and `left(group)`
        once its last watcher has gone (its snapshot with it)."""
        self._joined.append(joined)
        self._left.append(left)

    def get(self, group: str, node: str | None = None) -> Snapshot | None:
        snapshot = self._snapshots.get(group)
        override = self._overrides.get(node) if node is not None else None
        if snapshot is None or not override:
            return snapshot
        return Snapshot(snapshot.revision, {**snapshot.types, **override})

    def set(self, group: str, snapshot: Snapshot) -> None:
        previous = self._snapshots.get(group)
        if previous is not None:
            # A type the revision left as it was stays the same object, encoded responses and
            # all: streams see at a glance that nothing of it changed.
            kept: dict[str, TypeSnapshot] = {}
            for type_url, types in snapshot.types.items():
                before = previous.types.get(type_url)
                if before is not None and before.version == types.version:
                    types = before
                elif before is not None:
                    types.follow(before)
                kept[type_url] = types
            snapshot = Snapshot(snapshot.revision, kept)
        self._snapshots[group] = snapshot
        self._notify(("group", group))

    def set_overrides(self, node: str, types: dict[str, TypeSnapshot]) -> None:
        """Replace what this proxy gets instead of its group's version of some types."""
        if types:
            self._overrides[node] = types
        elif self._overrides.pop(node, None) is None:
            return
        self._notify(("node", node))

    def _notify(self, key: tuple[str, str]) -> None:
        for changed in self._waiting.get(key, ()):
            changed.set()

    @contextmanager
    def watching(self, proxy_group: ProxyGroup, node: str, changed: Signal) -> Iterator[Callable[[], Snapshot | None]]:
        """Set `changed` on every change to the proxy's snapshot, until the block ends; the
        block gets a function answering the snapshot now (None until there is one). The
        watcher's own event, not a task of the cache's: a push wakes each stream once."""
        group = proxy_group.key
        keys = [("group", group), ("node", node)]
        new = ("group", group) not in self._waiting
        for key in keys:
            self._waiting.setdefault(key, set()).add(changed)
        if new:
            for joined in self._joined:
                joined(proxy_group)
        try:
            yield lambda: self.get(group, node)
        finally:
            for key in keys:
                watchers = self._waiting[key]
                watchers.discard(changed)
                if not watchers:
                    del self._waiting[key]
            if ("group", group) not in self._waiting:
                self._snapshots.pop(group, None)
                for left in self._left:
                    left(proxy_group)
