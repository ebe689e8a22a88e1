"""What each proxy group should have: snapshots, serialized once, independent of any stream."""

from controlplane.cache.snapshot import Snapshot, TypeSnapshot
from controlplane.cache.snapshots import SnapshotCache
from controlplane.cache.watcher import ConfigWatcher, Signal

__all__ = ["ConfigWatcher", "Signal", "Snapshot", "SnapshotCache", "TypeSnapshot"]
