"""Global token budgets of a day or a month: the control plane counts their windows, in the
store, from every edge Envoy's own token counters, and gives each Envoy an allowance.

Every interval the keeper reads each edge Envoy's `gen_ai...client.token.usage.{input,output}`
counters (the llm filter's, equal to the backends' `usage`) from its admin `/stats`, adds what
each counter gained since the last reading to the current window's usage in the store, in the
same atomic write as the reading itself, then gives each Envoy its part of what is left of the
window (split by the tokens each used, as the quota balancer splits rates) under a new window
id. The filter starts a count from zero at each id and refuses past its allowance.

So the count survives restarts: an Envoy that restarts starts its counters from zero, which the
keeper sees (its start time moved, or a counter went down) and counts from zero; a control plane
that restarts reads the last readings back from the store. A crash loses at most the usage
between the last reading and the crash: one interval. The windows come from an injectable
clock in each budget's zone (controlplane/quota/windows.py); when it enters a new window the
usage key is new, so the usage is 0 and every Envoy gets a fresh allowance at the next reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp

from controlplane.policy import Policy
from controlplane.policy.ai import WINDOW_S, TokenBudget
from controlplane.quota.shares import split
from controlplane.quota.windows import Window, window
from controlplane.store import StoreUnavailable
from controlplane.translate import Allowance
from controlplane.xds import ProxyRegistry, ProxyStatus

log = logging.getLogger(__name__)

SERIES_PREFIX = "wasmcustom.gen_ai.tenant."
TOKEN_SUFFIXES = (".client.token.usage.input", ".client.token.usage.output")
UPTIME = "server.uptime"
# An Envoy whose start moved by more than this between two readings restarted (its uptime is in
# whole seconds, and read a little after the wall clock).
RESTART_TOLERANCE_S = 3.0

Clock = Callable[[], float]


def file_clock(path: Path) -> Clock:
    """The time written in `path` (Unix seconds): for tests, which move it across a window's end."""
    return lambda: float(path.read_text())


class UsageStore(Protocol):
    async def add_usage(self, deltas: Mapping[str, int], readings: Mapping[str, str]) -> None: ...
    async def usage(self, keys: Sequence[str]) -> dict[str, int]: ...
    async def readings(self) -> dict[str, str]: ...


def usage_key(budget: str, w: Window) -> str:
    return f"{budget}/{w.label}"


@dataclass(frozen=True)
class Reading:
    """One Envoy's token counters: series (`<tenant>.model.<model>.backend.<backend>.<type>`) ->
    tokens since it started, and when it started (Unix seconds, by the wall clock)."""

    started: float
    counters: dict[str, int]

    def dump(self) -> str:
        return json.dumps({"started": self.started, "counters": self.counters}, sort_keys=True)

    @classmethod
    def load(cls, text: str) -> Reading | None:
        try:
            raw = json.loads(text)
            return cls(float(raw["started"]), {str(k): int(v) for k, v in raw["counters"].items()})
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def gained_since(self, previous: Reading | None, now: float, young_s: float) -> dict[str, int]:
        """Tokens each series counted since `previous`: all of them after a restart (the start
        moved, or a counter went down). An Envoy first seen counts all if it started within
        `young_s`, else nothing yet (what it counted before may predate the budget)."""
        if previous is None:
            base = {} if now - self.started <= young_s else self.counters
        elif abs(self.started - previous.started) > RESTART_TOLERANCE_S or any(
                value < previous.counters.get(series, 0) for series, value in self.counters.items()):
            base = {}
        else:
            base = previous.counters
        return {series: value - base.get(series, 0) for series, value in self.counters.items()
                if value > base.get(series, 0)}


def parse_stats(stats: Sequence[Mapping[str, object]], now: float) -> Reading | None:
    counters: dict[str, int] = {}
    uptime: float | None = None
    for stat in stats:
        name, value = str(stat.get("name", "")), stat.get("value", 0)
        if not isinstance(value, int | float):
            continue
        if name == UPTIME:
            uptime = float(value)
        elif name.startswith(SERIES_PREFIX) and name.endswith(TOKEN_SUFFIXES):
            series, _, kind = name[len(SERIES_PREFIX):].rpartition(".client.token.usage.")
            counters[f"{series}.{kind}"] = int(value)
    return None if uptime is None else Reading(round(now - uptime), counters)


def counts_for(budget: TokenBudget, series: str) -> bool:
    """Whether a series' tokens count in the budget: its tenant's, and its model's when it names one
    (the filter writes a model name's dots as '_' in stat names)."""
    tenant, _, rest = series.partition(".model.")
    model = rest.rpartition(".backend.")[0]
    return tenant == budget.tenant and (budget.model is None or budget.model.replace(".", "_") == model)


def global_budgets(policy: Policy) -> dict[str, TokenBudget]:
    return {name: b for name, b in sorted(policy.tokenbudgets.items()) if b.per not in WINDOW_S}


class UsageKeeper:
    def __init__(self, fleet: ProxyRegistry, policy: Callable[[], Policy | None], store: UsageStore,
                 publish: Callable[[dict[str, dict[str, Allowance]]], None], *,
                 everywhere: Callable[[], list[ProxyStatus]] | None = None,
                 clock: Clock = time.time, interval_s: float = 10.0, floor: float = 0.1) -> None:
        """`fleet`: this replica's proxies, which it counts and gives allowances to;
        `everywhere`: every replica's (default: this one's), among which what is left is shared."""
        self._fleet = fleet
        self._everywhere = everywhere or fleet.proxies
        self._policy = policy
        self._store = store
        self._publish = publish
        self._clock = clock
        self._interval_s = interval_s
        self._floor = floor
        self._readings: dict[str, Reading] = {}  # node -> last reading stored
        self._used: dict[tuple[str, str], int] = {}  # (node, budget) -> tokens in the last interval
        # budget -> (window label, nodes, edges everywhere, the budget as given, id): what its
        # allowances were given for
        self._issued: dict[str, tuple[str, frozenset[str], int, TokenBudget, int]] = {}
        self._allowances: dict[str, dict[str, Allowance]] = {}
        self._last_id = 0
        self._wake = asyncio.Event()
        fleet.on_change(self._wake.set)  # a proxy that connects gets its allowance at once

    async def run(self) -> None:
        self._readings = {node: r for node, text in (await self._store.readings()).items()
                          if (r := Reading.load(text)) is not None}
        timeout = aiohttp.ClientTimeout(total=max(0.2, min(self._interval_s / 2, 5.0)))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    await self.cycle(session)
                except StoreUnavailable as exc:
                    # Nothing stored, nothing forgotten: the next reading counts this interval too.
                    log.warning("token budgets not counted this interval: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval_s)
                self._wake.clear()

    def _edges(self) -> list[ProxyStatus]:
        by_node = {p.node_id: p for p in self._fleet.proxies() if p.cluster == "edge" and p.admin_address}
        return [by_node[n] for n in sorted(by_node)]

    async def cycle(self, session: aiohttp.ClientSession) -> None:
        """Read, store, give allowances: one interval's work."""
        policy = self._policy()
        if policy is None:
            return  # not published yet: the readings loaded from the store are still to be used
        budgets = global_budgets(policy)
        if not budgets:
            # Readings go stale while nothing is counted: a budget made later starts afresh.
            self._readings = {}
            if self._allowances:
                self._allowances, self._issued = {}, {}
                self._publish({})
            return
        edges = self._edges()
        readings = await asyncio.gather(*(self._read(session, p) for p in edges))
        now = self._clock()
        windows = {name: window(now, "month" if b.per == "month" else "day", b.zone) for name, b in budgets.items()}
        deltas: dict[str, int] = {}
        moved: set[str] = set()
        self._used = {}
        for proxy, reading in zip(edges, readings, strict=True):
            if reading is None:
                continue
            gained = reading.gained_since(self._readings.get(proxy.node_id), time.time(),
                                          2 * self._interval_s + RESTART_TOLERANCE_S)
            for series, tokens in gained.items():
                for name, b in budgets.items():
                    if counts_for(b, series):
                        key = usage_key(name, windows[name])
                        deltas[key] = deltas.get(key, 0) + tokens
                        self._used[proxy.node_id, name] = self._used.get((proxy.node_id, name), 0) + tokens
                        moved.add(name)
        fresh = {p.node_id: r for p, r in zip(edges, readings, strict=True) if r is not None}
        await self._store.add_usage(deltas, {node: r.dump() for node, r in fresh.items()})
        self._readings.update(fresh)
        used = await self._store.usage([usage_key(name, w) for name, w in windows.items()])
        self._give(budgets, windows, used, [p.node_id for p in edges], moved)

    def _give(self, budgets: Mapping[str, TokenBudget], windows: Mapping[str, Window], used: Mapping[str, int],
              nodes: list[str], moved: set[str]) -> None:
        changed = False
        allowances: dict[str, dict[str, Allowance]] = {n: {} for n in nodes}
        # Other replicas give their own proxies theirs: this one's part of what is left is its
        # share of every replica's edge proxies, so the parts add up to what is left.
        everywhere = len({p.node_id for p in self._everywhere() if p.cluster == "edge"} | set(nodes))
        for name, b in budgets.items():
            w = windows[name]
            issued = self._issued.get(name)
            if issued is not None and name not in moved and issued[:4] == (w.label, frozenset(nodes), everywhere, b):
                for node in nodes:  # nothing used, same window, proxies and budget: keep their counts
                    allowances[node][name] = self._allowances[node][name]
                continue
            left = max(0, b.tokens - used[usage_key(name, w)]) * len(nodes) // max(1, everywhere)
            fractions = split({n: float(self._used.get((n, name), 0)) for n in nodes}, self._floor) if nodes else {}
            self._last_id = max(self._last_id + 1, time.time_ns())  # unique across restarts too
            self._issued[name] = (w.label, frozenset(nodes), everywhere, b, self._last_id)
            for node, fraction in fractions.items():
                allowances[node][name] = Allowance(self._last_id, int(left * fraction), int(w.end),
                                                   used[usage_key(name, w)])
            changed = True
            log.info("token budget %s, window %s: %d of %d used, %d given to %d of %d proxies",
                     name, w.label, used[usage_key(name, w)], b.tokens, left, len(nodes), everywhere)
        if changed or allowances.keys() != self._allowances.keys():
            self._allowances = allowances
            self._publish(allowances)

    async def _read(self, session: aiohttp.ClientSession, proxy: ProxyStatus) -> Reading | None:
        try:
            async with session.get(f"http://{proxy.admin_address}/stats",
                                   params={"format": "json", "filter": r"^(wasmcustom\.gen_ai\.|server\.uptime$)"},
                                   ) as response:
                stats = (await response.json(content_type=None))["stats"]
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            log.debug("cannot read token usage from %s: %s", proxy.node_id, exc)
            return None
        return parse_stats(stats, time.time())
