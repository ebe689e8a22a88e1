"""Drives every canary through pending → progressing → promoting → succeeded, or rolled back,
on its own schedule. State and weights are written to the store, so any restart (or another
replica) resumes at the same step; the metric window of an interrupted step starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from controlplane.canary import metrics, webhooks
from controlplane.canary.analysis import Judgement, Verdict, judge
from controlplane.canary.transitions import apply_weight, weight_in_policy, with_event, with_status
from controlplane.policy import Canary, CanaryStatus, Policy
from controlplane.policy.canary import FINAL, spec_key
from controlplane.store import Conflict, Store, StoreUnavailable

log = logging.getLogger(__name__)


@dataclass
class Live:
    """What the controller knows between revisions: the open window and the last verdict."""

    step: int
    started: float
    baseline: dict[str, dict[str, metrics.Sample]]
    stable: metrics.Window | None = None
    canary: metrics.Window | None = None
    judgement: Judgement | None = None


class CanaryController:
    def __init__(self, store: Store, admin_addresses: Callable[[], list[str]], *,
                 tick_s: float = 0.25, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._admin_addresses = admin_addresses
        self._tick_s = tick_s
        self._clock = clock
        self._live: dict[str, Live] = {}
        # Notifications decided during a tick: sent only once its revision is committed, so a
        # tick lost to a conflict (and decided again on the next one) does not notify twice.
        self._outbox: list[tuple[str, float, dict[str, object]]] = []

    def live(self, name: str) -> Live | None:
        return self._live.get(name)

    async def peek(self, name: str, canary: Canary) -> tuple[metrics.Window, metrics.Window] | None:
        """The open window so far (stable, canary), for a live view; changes nothing."""
        live = self._live.get(name)
        if live is None:
            return None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            now = await metrics.read(session, self._admin_addresses(), {canary.stable, canary.canary})
        return (metrics.between(live.baseline, now, canary.stable), metrics.between(live.baseline, now, canary.canary))

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                with contextlib.suppress(Conflict, StoreUnavailable):  # the next tick re-reads and retries
                    await self.tick(session)
                await asyncio.sleep(self._tick_s)

    async def tick(self, session: aiohttp.ClientSession) -> None:
        current = await self._store.current()
        policy = current.policy
        for name in list(self._live):
            if name not in policy.canaries:
                del self._live[name]
        changed = policy
        self._outbox = []
        for name, canary in sorted(policy.canaries.items()):
            changed = await self._advance(session, changed, name, canary)
        if changed != policy:
            await self._store.commit(changed, expected=current.number, actor="canary-controller",
                                     message="canary: " + ", ".join(
                                         f"{n} {s.state} {s.weight}%" for n, s in sorted(changed.canary_status.items())
                                         if policy.canary_status.get(n) != s))
        outbox, self._outbox = self._outbox, []
        for url, timeout_s, payload in outbox:
            ok, why = await webhooks.call(session, url, timeout_s, payload)
            if not ok:
                log.warning("canary notification: %s", why)

    async def _advance(self, session: aiohttp.ClientSession, policy: Policy, name: str, canary: Canary) -> Policy:
        now = self._clock()
        status = policy.canary_status.get(name)
        if status is None or status.spec != spec_key(canary):
            status = with_event(CanaryStatus(spec=spec_key(canary)), now, "pending", 0, "created")
            self._live.pop(name, None)
        if status.state in FINAL:
            return with_status(policy, name, status)  # finished: the route is released, its split is the operator's
        if status.state == "paused":
            # Hold the paused weight even if someone re-applied the route.
            if weight_in_policy(policy, canary) != status.weight:
                policy = apply_weight(policy, canary, status.weight, ab=True)
            return with_status(policy, name, status)
        payload = {"canary": name, "service": canary.service, "route": canary.route, "weight": status.weight}
        if status.state == "pending":
            if canary.webhooks.pre_rollout is not None:
                ok, why = await webhooks.call(session, str(canary.webhooks.pre_rollout), canary.webhooks.timeout_s,
                                              {**payload, "phase": "pre-rollout"})
                if not ok:
                    return with_status(policy, name, self._failed(status, now, f"pre-rollout gate: {why}", canary))
            return await self._step(session, policy, name, canary, status, 0, now, "rollout started")
        if status.state == "promoting":
            return await self._promote(session, policy, name, canary, status, now, payload)
        # progressing
        if weight_in_policy(policy, canary) != status.weight:
            policy = apply_weight(policy, canary, status.weight, ab=True)
        live = self._live.get(name)
        if live is None or live.step != status.step:
            self._live[name] = await self._open_window(session, canary, status.step, now)
            return with_status(policy, name, status)
        if now - live.started < canary.interval_s:
            return with_status(policy, name, status)
        after = await metrics.read(session, self._admin_addresses(), {canary.stable, canary.canary})
        live.stable = metrics.between(live.baseline, after, canary.stable)
        live.canary = metrics.between(live.baseline, after, canary.canary)
        live.judgement = judge(live.canary, canary.thresholds)
        live.baseline, live.started = after, now
        log.info("canary %s step %d (%d%%): %s, %s", name, status.step, status.weight,
                 live.judgement.verdict.value, live.judgement.reason)
        if live.judgement.verdict is Verdict.INCONCLUSIVE:
            return with_status(policy, name, status)  # neither a pass nor a failure: watch again
        if live.judgement.verdict is Verdict.FAIL:
            failed = self._failed(status, now, live.judgement.reason, canary)
            if failed.state == "rolled_back":
                policy = apply_weight(policy, canary, 0, ab=False)
                self._notify(canary.webhooks.on_rollback, canary, {**payload, "phase": "rollback"})
            return with_status(policy, name, failed)
        weights = canary.weights()
        if status.step + 1 < len(weights):
            return await self._step(session, policy, name, canary, status, status.step + 1, now, live.judgement.reason)
        promoting = with_event(status, now, "promoting", status.weight, f"all steps passed: {live.judgement.reason}")
        return await self._promote(session, policy, name, canary, promoting, now, payload)

    async def _open_window(self, session: aiohttp.ClientSession, canary: Canary, step: int, now: float) -> Live:
        baseline = await metrics.read(session, self._admin_addresses(), {canary.stable, canary.canary})
        return Live(step, now, baseline)

    async def _step(self, session: aiohttp.ClientSession, policy: Policy, name: str, canary: Canary,
                    status: CanaryStatus, step: int, now: float, why: str) -> Policy:
        weight = canary.weights()[step]
        status = with_event(status, now, "progressing", weight, f"step {step + 1}: {weight}% ({why})",
                            step=step, step_started_at=now)
        self._live[name] = await self._open_window(session, canary, step, now)
        return with_status(apply_weight(policy, canary, weight, ab=True), name, status)

    async def _promote(self, session: aiohttp.ClientSession, policy: Policy, name: str, canary: Canary,
                       status: CanaryStatus, now: float, payload: dict[str, object]) -> Policy:
        if canary.webhooks.pre_promotion is not None:
            ok, why = await webhooks.call(session, str(canary.webhooks.pre_promotion), canary.webhooks.timeout_s,
                                          {**payload, "phase": "pre-promotion"})
            if not ok:
                # A closed gate holds the canary where it is; it is asked again next tick.
                if status.events[-1].message != f"pre-promotion gate: {why}":
                    status = with_event(status, now, status.state, status.weight, f"pre-promotion gate: {why}")
                return with_status(policy, name, status)
        status = with_event(status, now, "succeeded", 100, "promoted: all traffic on the canary")
        self._live.pop(name, None)
        self._notify(canary.webhooks.on_success, canary, {**payload, "weight": 100, "phase": "success"})
        return with_status(apply_weight(policy, canary, 100, ab=False), name, status)

    @staticmethod
    def _failed(status: CanaryStatus, now: float, reason: str, canary: Canary) -> CanaryStatus:
        failures = status.failed_checks + 1
        if failures >= canary.failure_limit:
            return with_event(status, now, "rolled_back", 0,
                              f"rolled back after {failures} failed check(s): {reason}", failed_checks=failures)
        return with_event(status, now, status.state, status.weight,
                          f"failed check {failures} of {canary.failure_limit}: {reason}", failed_checks=failures)

    def _notify(self, url: object, canary: Canary, payload: dict[str, object]) -> None:
        if url is not None:
            self._outbox.append((str(url), canary.webhooks.timeout_s, payload))
