"""Turns store revisions into snapshots for every proxy group the cache is watched for.

A write after a quiet spell (no push for `quiet_s`) is pushed at once. The writes of a burst
that follow it are debounced: their push waits until writes pause for `quiet_s`, but never
longer than `max_delay_s` after the first of them. Every snapshot passes the
consistency check first; one that fails is not published and the previous one keeps serving.

Translating, checking and encoding run in a worker thread: a large policy takes tens to
hundreds of milliseconds per group, during which the event loop keeps serving the xDS streams
(the translator is pure, so it needs nothing of the loop). One build runs at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping

from controlplane.cache import Snapshot, SnapshotCache, TypeSnapshot
from controlplane.cache.consistency import problems
from controlplane.groups import ProxyGroup
from controlplane.policy import Policy
from controlplane.resources import Resources
from controlplane.store import Revision, Store
from controlplane.translate import Allowance

log = logging.getLogger(__name__)

Translator = Callable[[Policy, ProxyGroup], Resources]
# What differs for one proxy holding shares (policy name -> fraction) of global limits and
# allowances (budget name -> Allowance) of global token budgets.
ShareTranslator = Callable[[Policy, Mapping[str, float], Mapping[str, Allowance]], Resources]


class Publisher:
    def __init__(
        self,
        store: Store,
        cache: SnapshotCache,
        translator: Translator,
        share_translator: ShareTranslator | None = None,
        *,
        quiet_s: float = 0.05,
        max_delay_s: float = 0.25,
        on_publish: Callable[[Revision], None] = lambda _: None,
    ) -> None:
        self._store = store
        self._cache = cache
        self._translate = translator
        self._translate_shares = share_translator
        self._shares: dict[str, dict[str, float]] = {}  # node -> global limit -> fraction
        self._allowances: dict[str, dict[str, Allowance]] = {}  # node -> global token budget -> allowance
        self._groups: dict[str, ProxyGroup] = {}
        self._revision: Revision | None = None
        self._quiet_s = quiet_s
        self._max_delay_s = max_delay_s
        self._on_publish = on_publish
        self._behind: tuple[float, int] | None = None  # (first seen behind, revision processed then)
        self._unbuilt: dict[str, ProxyGroup] = {}  # joined since the last build
        self._joined = asyncio.Event()
        self._building = asyncio.Lock()
        cache.on_groups(self.join, self.leave)

    @property
    def revision(self) -> Revision | None:
        return self._revision

    def join(self, group: ProxyGroup) -> None:
        """A proxy of a group not seen before watches the cache: give the group a snapshot soon."""
        if group.key not in self._groups:
            self._groups[group.key] = group
            self._unbuilt[group.key] = group
            self._joined.set()

    def leave(self, group: ProxyGroup) -> None:
        """The group's last proxy left: stop translating for it."""
        self._groups.pop(group.key, None)
        self._unbuilt.pop(group.key, None)

    def set_shares(self, shares: dict[str, dict[str, float]]) -> None:
        """Each proxy's fractions of the global limits (from the quota balancer)."""
        self._set_overrides(shares, self._allowances)

    def set_allowances(self, allowances: dict[str, dict[str, Allowance]]) -> None:
        """Each proxy's allowances of the global token budgets (from the usage keeper)."""
        self._set_overrides(self._shares, allowances)

    def _set_overrides(self, shares: dict[str, dict[str, float]], allowances: dict[str, dict[str, Allowance]]) -> None:
        gone = (self._shares.keys() | self._allowances.keys()) - (shares.keys() | allowances.keys())
        self._shares, self._allowances = shares, allowances
        for node in gone:
            self._cache.set_overrides(node, {})
        if self._revision is not None:
            self._build_overrides(self._revision)

    def _build_overrides(self, revision: Revision) -> None:
        if self._translate_shares is None:
            return
        for node in sorted(self._shares.keys() | self._allowances.keys()):
            resources = self._translate_shares(revision.policy, self._shares.get(node, {}),
                                               self._allowances.get(node, {}))
            self._cache.set_overrides(node, {t: TypeSnapshot.build(t, msgs) for t, msgs in resources.items() if msgs})

    def _snapshot(self, group: ProxyGroup, revision: Revision) -> Snapshot | None:
        """The group's snapshot of `revision`, None if it must not be published (in a worker thread)."""
        try:
            resources = self._translate(revision.policy, group)
        except Exception:  # noqa: BLE001 - a translator bug withholds one revision, not every later one
            log.exception("REVISION %d NOT PUBLISHED to %s: translation failed", revision.number, group.key)
            return None
        if found := problems(resources):
            previous = self._cache.get(group.key)
            log.error("REVISION %d NOT PUBLISHED to %s: its snapshot is inconsistent (%s); proxies keep %s",
                      revision.number, group.key, "; ".join(found),
                      "nothing" if previous is None else f"revision {previous.revision}")
            return None
        return Snapshot.build(revision.number, resources, self._cache.get(group.key))

    async def _build(self, groups: list[ProxyGroup], revision: Revision) -> list[bool]:
        """Build the groups' snapshots off the loop, then set those of groups still watched."""
        snapshots = await asyncio.to_thread(lambda: [self._snapshot(g, revision) for g in groups])
        for group, snapshot in zip(groups, snapshots, strict=True):
            # A group whose last proxy left meanwhile gets nothing: it would never be dropped.
            if snapshot is not None and self._groups.get(group.key) == group:
                self._cache.set(group.key, snapshot)
        return [snapshot is not None for snapshot in snapshots]

    def caught_up(self, current: int, *, grace_s: float = 10.0) -> bool:
        """Whether revision `current` (the store's newest) has been published, or has waited
        less than `grace_s` since this was last asked while publishing made progress."""
        if self._revision is not None and self._revision.number >= current:
            self._behind = None
            return True
        processed = -1 if self._revision is None else self._revision.number
        now = time.monotonic()
        if self._behind is None or self._behind[1] != processed:
            self._behind = (now, processed)
        return now - self._behind[0] <= grace_s

    async def run(self) -> None:
        latest: Revision | None = None
        changed = asyncio.Event()

        async def follow() -> None:
            nonlocal latest
            async for revision in self._store.watch():
                latest = revision
                changed.set()
            raise RuntimeError("the store's watch ended")

        async def push() -> None:
            pushed_at = -math.inf  # when the last push ended
            while True:
                await changed.wait()
                changed.clear()
                started = time.monotonic()
                # A write after a quiet spell goes out at once: an isolated change pays no
                # debounce; writes that follow it within the burst wait for the burst to pause.
                in_burst = started - pushed_at < self._quiet_s
                while in_burst and (left := self._max_delay_s - (time.monotonic() - started)) > 0:
                    try:
                        await asyncio.wait_for(changed.wait(), min(self._quiet_s, left))
                    except TimeoutError:
                        break
                    changed.clear()
                assert latest is not None
                await self._publish(latest)
                pushed_at = time.monotonic()

        async def welcome() -> None:
            while True:
                await self._joined.wait()
                self._joined.clear()
                async with self._building:
                    groups, self._unbuilt = list(self._unbuilt.values()), {}
                    if groups and self._revision is not None:
                        await self._build(groups, self._revision)

        # One group: if following the store fails, the whole publisher fails (and is restarted)
        # rather than waiting forever for revisions that no longer come.
        async with asyncio.TaskGroup() as group:
            group.create_task(follow())
            group.create_task(push())
            group.create_task(welcome())

    async def _publish(self, revision: Revision) -> None:
        async with self._building:
            started = time.perf_counter()
            self._revision = revision
            self._unbuilt.clear()  # every group is built now
            built = await self._build(list(self._groups.values()), revision)
            self._build_overrides(revision)
            log.info("revision %d published to %d of %d group(s) in %.1f ms",
                     revision.number, sum(built), len(built), (time.perf_counter() - started) * 1e3)
            if all(built):
                self._on_publish(revision)
