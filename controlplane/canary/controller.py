"""Drives every canary through pending → progressing → promoting → succeeded, or rolled back,
on its own schedule. Progressing passes through stages, each optional: shadow (answers
compared, no live weight), A/B (only matching requests), the weighted steps. State and
weights are written to the store, so any restart (or another replica) resumes at the same
stage and step; the metric window of an interrupted step starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from controlplane.canary import generation, metrics, webhooks
from controlplane.canary.analysis import Judgement, Verdict, combined, judge, judge_generation, judge_shadow
from controlplane.canary.transitions import (
    apply_stage,
    released,
    with_event,
    with_status,
    without_orphan_mirrors,
)
from controlplane.policy import Canary, CanaryStatus, Policy
from controlplane.policy.canary import FINAL, Stage, spec_key
from controlplane.shadow import Comparator, Target
from controlplane.shadow.server import Tally
from controlplane.store import Conflict, Store, StoreUnavailable

log = logging.getLogger(__name__)

WindowKey = tuple[Stage | None, int, float]  # stage, step, when the step (or a resume) began


@dataclass
class Live:
    """What the controller knows between revisions: the open window and the last verdict."""

    key: WindowKey
    started: float
    baseline: dict[str, dict[str, metrics.Sample]]
    timings: tuple[dict[str, generation.Timings], dict[str, generation.Timings]] | None = None
    stable: metrics.Window | None = None
    canary: metrics.Window | None = None
    shadow: Tally | None = None  # the last closed shadow window
    generation: tuple[generation.GenWindow, generation.GenWindow] | None = None  # stable, canary
    judgement: Judgement | None = None


def _endpoints(policy: Policy, backend: str) -> list[str]:
    found = policy.backends.get(backend)
    return [] if found is None else [f"{e.address}:{e.port}" for e in found.endpoints]


def _generative(canary: Canary) -> bool:
    return canary.thresholds.max_ttft_ratio is not None or canary.thresholds.max_tpot_ratio is not None


class CanaryController:
    def __init__(self, store: Store, admin_addresses: Callable[[], list[str]], *,
                 comparator: Comparator | None = None, comparator_address: tuple[str, int] | None = None,
                 tick_s: float = 0.25, clock: Callable[[], float] = time.time) -> None:
        """`comparator_address`: where Envoys reach the comparator (its listening address if None)."""
        self._store = store
        self._admin_addresses = admin_addresses
        self._comparator = comparator
        self._comparator_address = comparator_address
        self._tick_s = tick_s
        self._clock = clock
        self._live: dict[str, Live] = {}
        # Notifications decided during a tick: sent only once its revision is committed, so a
        # tick lost to a conflict (and decided again on the next one) does not notify twice.
        self._outbox: list[tuple[str, float, dict[str, object]]] = []

    def live(self, name: str) -> Live | None:
        return self._live.get(name)

    def shadow_so_far(self, name: str) -> Tally | None:
        return None if self._comparator is None else self._comparator.peek(name)

    def _shadow_address(self) -> tuple[str, int] | None:
        if self._comparator_address is not None:
            return self._comparator_address
        return None if self._comparator is None else self._comparator.address

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
        address = self._shadow_address()
        if address is not None:
            changed = without_orphan_mirrors(changed, address)
        self._set_shadow_targets(changed)
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

    def _set_shadow_targets(self, policy: Policy) -> None:
        if self._comparator is None:
            return
        targets: dict[str, Target] = {}
        for name, canary in policy.canaries.items():
            status = policy.canary_status.get(name)
            if status is None or status.stage != "shadow" or status.state not in ("progressing", "paused"):
                continue
            route = next((r for r in policy.services[canary.service].routes if r.name == canary.route), None)
            if route is not None:
                targets[name] = Target(route.match, tuple(_endpoints(policy, canary.stable)),
                                       tuple(_endpoints(policy, canary.canary)))
        self._comparator.set_targets(targets)

    def _route(self, policy: Policy, name: str, canary: Canary, status: CanaryStatus) -> Policy:
        # A status written before stages existed has none: a step means the weighted stage.
        stage = status.stage if status.stage is not None or status.step < 0 else "weighted"
        return apply_stage(policy, name, canary, stage, status.weight, self._shadow_address())

    async def _advance(self, session: aiohttp.ClientSession, policy: Policy, name: str, canary: Canary) -> Policy:
        now = self._clock()
        status = policy.canary_status.get(name)
        if status is None or status.spec != spec_key(canary):
            status = with_event(CanaryStatus(spec=spec_key(canary)), now, "pending", 0, "created")
            self._live.pop(name, None)
        if status.state in FINAL:
            return with_status(policy, name, status)  # finished: the route is released, its split is the operator's
        if status.state == "paused":
            # Hold the paused stage's route even if someone re-applied it.
            return with_status(self._route(policy, name, canary, status), name, status)
        payload = {"canary": name, "service": canary.service, "route": canary.route, "weight": status.weight}
        if status.state == "pending":
            return await self._start(session, policy, name, canary, status, now, payload)
        if status.state == "promoting":
            return await self._promote(session, policy, name, canary, status, now, payload)
        # progressing
        policy = self._route(policy, name, canary, status)
        judgement = await self._analyse(session, policy, name, canary, status, now)
        if judgement is None:
            return with_status(policy, name, status)
        log.info("canary %s %s step %d (%d%%): %s, %s", name, status.stage, status.step, status.weight,
                 judgement.verdict.value, judgement.reason)
        if judgement.verdict is Verdict.INCONCLUSIVE:
            return with_status(policy, name, self._inconclusive(status, now, judgement, canary, payload))
        status = status.model_copy(update={"inconclusive": 0})
        if judgement.verdict is Verdict.FAIL:
            return self._fail(policy, name, canary, status, now, judgement, payload)
        needed = {"shadow": canary.shadow.windows if canary.shadow else 1, "ab": canary.ab_windows,
                  "weighted": canary.step_windows}[status.stage or "weighted"]
        if status.passed_windows + 1 < needed:
            return with_status(policy, name, status.model_copy(update={"passed_windows": status.passed_windows + 1}))
        if status.stage in ("shadow", "ab"):
            stage: Stage = "ab" if status.stage == "shadow" and canary.ab_windows else "weighted"
            return await self._enter(session, policy, name, canary, status, stage, -1 if stage == "ab" else 0, now,
                                     f"{status.stage} passed: {judgement.reason}")
        weights = canary.weights()
        if status.step + 1 < len(weights):
            return await self._enter(session, policy, name, canary, status, "weighted", status.step + 1, now,
                                     judgement.reason)
        promoting = with_event(status, now, "promoting", status.weight, f"all steps passed: {judgement.reason}")
        return await self._promote(session, policy, name, canary, promoting, now, payload)

    async def _start(self, session: aiohttp.ClientSession, policy: Policy, name: str, canary: Canary,
                     status: CanaryStatus, now: float, payload: dict[str, object]) -> Policy:
        """Pending: wait for the candidate to be ready (rolled back, loudly, if it never is), ask
        the pre-rollout gate, then enter the first stage."""
        if not await self._ready(session, policy, canary):
            waited = now - status.events[0].at
            if waited >= canary.ready_timeout_s:
                status = with_event(status, now, "rolled_back", 0,
                                    f"rolled back: {canary.canary} not ready after {waited:.0f} s "
                                    f"(GET {canary.readiness_path} answered no 2xx)", gate="ready_timeout_s")
                self._notify(canary.webhooks.on_rollback, canary, {**payload, "phase": "rollback",
                                                                   "reason": "never ready"})
                return with_status(released(policy, name, canary, 0), name, status)
            waiting = f"waiting for {canary.canary} to be ready (GET {canary.readiness_path})"
            if status.events[-1].message != waiting:
                status = with_event(status, now, "pending", 0, waiting)
            return with_status(policy, name, status)
        if canary.webhooks.pre_rollout is not None:
            ok, why = await webhooks.call(session, str(canary.webhooks.pre_rollout), canary.webhooks.timeout_s,
                                          {**payload, "phase": "pre-rollout"})
            if not ok:
                failed = self._failed(status, now, Judgement(Verdict.FAIL, f"pre-rollout gate: {why}",
                                                             "webhooks.pre_rollout"), canary)
                return with_status(policy, name, failed)
        if canary.shadow is not None:
            return await self._enter(session, policy, name, canary, status, "shadow", -1, now, "rollout started")
        if canary.ab_windows:
            return await self._enter(session, policy, name, canary, status, "ab", -1, now, "rollout started")
        return await self._enter(session, policy, name, canary, status, "weighted", 0, now, "rollout started")

    async def _ready(self, session: aiohttp.ClientSession, policy: Policy, canary: Canary) -> bool:
        for endpoint in _endpoints(policy, canary.canary):
            try:
                async with session.get(f"http://{endpoint}{canary.readiness_path}") as r:
                    if 200 <= r.status < 300:
                        return True
            except (aiohttp.ClientError, TimeoutError):
                continue
        return False

    async def _enter(self, session: aiohttp.ClientSession, policy: Policy, name: str, canary: Canary,
                     status: CanaryStatus, stage: Stage, step: int, now: float, why: str) -> Policy:
        if stage == "weighted":
            weight = canary.weights()[step]
            message = f"step {step + 1}: {weight}% ({why})"
        elif stage == "shadow":
            assert canary.shadow is not None
            weight = 0
            message = (f"shadow: {canary.shadow.percent:g}% of requests mirrored, {canary.canary}'s answers "
                       f"compared with {canary.stable}'s ({why})")
        else:
            weight = 0
            message = f"A/B: only requests matching `match` go to {canary.canary} ({why})"
        status = with_event(status, now, "progressing", weight, message, stage=stage, step=step,
                            step_started_at=now, passed_windows=0, inconclusive=0)
        self._live[name] = await self._open_window(session, policy, canary, name, (stage, step, now), now)
        return with_status(self._route(policy, name, canary, status), name, status)

    async def _open_window(self, session: aiohttp.ClientSession, policy: Policy, canary: Canary, name: str,
                           key: WindowKey, now: float) -> Live:
        baseline = await metrics.read(session, self._admin_addresses(), {canary.stable, canary.canary})
        if self._comparator is not None:
            self._comparator.take(name)
        live = Live(key, now, baseline)
        if _generative(canary):
            live.timings = await self._timings(session, policy, canary)
        return live

    @staticmethod
    async def _timings(session: aiohttp.ClientSession, policy: Policy, canary: Canary
                       ) -> tuple[dict[str, generation.Timings], dict[str, generation.Timings]]:
        return (await generation.read(session, _endpoints(policy, canary.stable)),
                await generation.read(session, _endpoints(policy, canary.canary)))

    async def _analyse(self, session: aiohttp.ClientSession, policy: Policy, name: str, canary: Canary,
                       status: CanaryStatus, now: float) -> Judgement | None:
        """The verdict on the window that just closed, or None while it is open."""
        live = self._live.get(name)
        key: WindowKey = (status.stage, status.step, status.step_started_at)
        if live is None or live.key != key:
            self._live[name] = await self._open_window(session, policy, canary, name, key, now)
            return None
        if now - live.started < canary.interval_s:
            return None
        after = await metrics.read(session, self._admin_addresses(), {canary.stable, canary.canary})
        live.stable = metrics.between(live.baseline, after, canary.stable)
        live.canary = metrics.between(live.baseline, after, canary.canary)
        judgements: list[Judgement] = []
        if status.stage == "shadow" and canary.shadow is not None:
            live.shadow = self._comparator.take(name) if self._comparator is not None else Tally()
            judgements.append(judge_shadow(live.shadow, canary.shadow))
        else:
            judgements.append(judge(live.canary, canary.thresholds, live.stable))
        if live.timings is not None:
            timings = await self._timings(session, policy, canary)
            live.generation = (generation.between(live.timings[0], timings[0]),
                               generation.between(live.timings[1], timings[1]))
            live.timings = timings
            judgements.append(judge_generation(*live.generation, canary.thresholds))
        live.judgement = combined(judgements)
        live.baseline, live.started = after, now
        return live.judgement

    def _inconclusive(self, status: CanaryStatus, now: float, judgement: Judgement, canary: Canary,
                      payload: dict[str, object]) -> CanaryStatus:
        """Too little data is never a verdict: after `inconclusive_limit` such windows in a row
        the canary pauses, says so, and waits for an operator."""
        count = status.inconclusive + 1
        if count < canary.inconclusive_limit:
            return status.model_copy(update={"inconclusive": count})
        self._notify(canary.webhooks.on_pause, canary, {**payload, "phase": "paused", "reason": judgement.reason})
        return with_event(status, now, "paused", status.weight,
                          f"paused: {count} inconclusive windows in a row ({judgement.reason}); "
                          "neither promoted nor rolled back: resume once traffic flows",
                          gate=judgement.gate, paused_state=status.state, inconclusive=0)

    def _fail(self, policy: Policy, name: str, canary: Canary, status: CanaryStatus, now: float,
              judgement: Judgement, payload: dict[str, object]) -> Policy:
        failed = self._failed(status, now, judgement, canary)
        if failed.state == "rolled_back":
            policy = released(policy, name, canary, 0)
            self._live.pop(name, None)
            self._notify(canary.webhooks.on_rollback, canary, {**payload, "phase": "rollback",
                                                               "gate": judgement.gate, "reason": judgement.reason})
        return with_status(policy, name, failed)

    async def _promote(self, session: aiohttp.ClientSession, policy: Policy, name: str, canary: Canary,
                       status: CanaryStatus, now: float, payload: dict[str, object]) -> Policy:
        if canary.webhooks.pre_promotion is not None:
            ok, why = await webhooks.call(session, str(canary.webhooks.pre_promotion), canary.webhooks.timeout_s,
                                          {**payload, "phase": "pre-promotion"})
            if not ok:
                # A closed gate holds the canary where it is; it is asked again next tick. The
                # analysis goes on meanwhile: a waiting gate never blocks a rollback.
                judgement = await self._analyse(session, policy, name, canary, status, now)
                if judgement is not None and judgement.verdict is Verdict.FAIL:
                    return self._fail(policy, name, canary, status, now, judgement, payload)
                if status.events[-1].message != f"pre-promotion gate: {why}":
                    status = with_event(status, now, status.state, status.weight, f"pre-promotion gate: {why}",
                                        gate="webhooks.pre_promotion")
                return with_status(policy, name, status)
        status = with_event(status, now, "succeeded", 100, "promoted: all traffic on the canary")
        self._live.pop(name, None)
        self._notify(canary.webhooks.on_success, canary, {**payload, "weight": 100, "phase": "success"})
        return with_status(released(policy, name, canary, 100), name, status)

    @staticmethod
    def _failed(status: CanaryStatus, now: float, judgement: Judgement, canary: Canary) -> CanaryStatus:
        failures = status.failed_checks + 1
        if failures >= canary.failure_limit:
            return with_event(status, now, "rolled_back", 0,
                              f"rolled back after {failures} failed check(s): {judgement.reason}",
                              gate=judgement.gate, failed_checks=failures)
        return with_event(status, now, status.state, status.weight,
                          f"failed check {failures} of {canary.failure_limit}: {judgement.reason}",
                          gate=judgement.gate, failed_checks=failures)

    def _notify(self, url: object, canary: Canary, payload: dict[str, object]) -> None:
        if url is not None:
            self._outbox.append((str(url), canary.webhooks.timeout_s, payload))
