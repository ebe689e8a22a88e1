"""The usage keeper's arithmetic (controlplane/quota/keeper.py): what an Envoy's token counters
gained between two readings, across Envoy restarts, and which budgets a series counts in."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import aiohttp
from harness import free_port

from controlplane.policy import Policy, parse_document, with_document
from controlplane.policy.ai import TokenBudget
from controlplane.quota.keeper import Reading, UsageKeeper, counts_for, parse_stats
from controlplane.store import open_store
from controlplane.translate import Allowance
from controlplane.xds import ProxyRegistry, ProxyStatus

SERIES = "acme.model.gpt-4o.backend.a"


def test_gains_between_readings_and_across_restarts() -> None:
    before = Reading(1000.0, {f"{SERIES}.input": 10, f"{SERIES}.output": 30})
    later = Reading(1001.0, {f"{SERIES}.input": 15, f"{SERIES}.output": 30, "beta.model.m.backend.a.input": 4})
    assert later.gained_since(before, now=2000, young_s=5) == {f"{SERIES}.input": 5, "beta.model.m.backend.a.input": 4}
    # Restarted: its start moved, so everything it counted is new, even above the old values.
    restarted = Reading(1900.0, {f"{SERIES}.input": 12, f"{SERIES}.output": 50})
    assert restarted.gained_since(before, now=2000, young_s=5) == {f"{SERIES}.input": 12, f"{SERIES}.output": 50}
    # A counter that went down is a restart too, whatever the start says.
    lower = Reading(1000.0, {f"{SERIES}.input": 3, f"{SERIES}.output": 31})
    assert lower.gained_since(before, now=2000, young_s=5) == {f"{SERIES}.input": 3, f"{SERIES}.output": 31}
    # First seen: all of a young Envoy's counts; none of one that ran before the keeper saw it.
    assert restarted.gained_since(None, now=1903, young_s=5) == restarted.counters
    assert restarted.gained_since(None, now=2000, young_s=5) == {}
    assert Reading.load(before.dump()) == before and Reading.load("{}") is None and Reading.load("x") is None


def test_stats_and_budget_matching() -> None:
    stats = [{"name": "server.uptime", "value": 42},
             {"name": f"wasmcustom.gen_ai.tenant.{SERIES}.client.token.usage.input", "value": 7},
             {"name": f"wasmcustom.gen_ai.tenant.{SERIES}.client.token.usage.output", "value": 9},
             {"name": f"wasmcustom.gen_ai.tenant.{SERIES}.server.requests.in_flight", "value": 1}]
    assert parse_stats(stats, now=1042.4) == Reading(1000, {f"{SERIES}.input": 7, f"{SERIES}.output": 9})
    assert parse_stats(stats[1:], now=1042.4) is None  # no uptime: a restart could not be told
    every = TokenBudget(tenant="acme", tokens=1, per="month")
    dotted = TokenBudget(tenant="acme", model="qwen2.5:7b", tokens=1, per="day")
    assert counts_for(every, f"{SERIES}.input") and not counts_for(every, "acme-2.model.m.backend.a.input")
    assert counts_for(dotted, "acme.model.qwen2_5:7b.backend.a.output") and not counts_for(dotted, f"{SERIES}.input")


async def test_a_replica_gives_its_proxies_their_part_of_what_is_left(tmp_path: Path) -> None:
    """Three edge Envoys, one of them on this replica: it gets a third of what is left of the
    month, so the replicas' parts add up to what is left (each replica gives its own)."""
    store = await open_store(f"sqlite:///{tmp_path / 'store.db'}")
    now = datetime.fromisoformat("2026-11-15T12:00:00+01:00").timestamp()
    await store.add_usage({"acme-month/2026-11-01T00:00:00+01:00": 300}, {})
    policy = Policy()
    for raw in ({"kind": "Tenant", "name": "acme", "spec": {}},
                {"kind": "TokenBudget", "name": "acme-month", "spec": {
                    "tenant": "acme", "tokens": 900, "per": "month", "zone": "Europe/Berlin"}}):
        policy = with_document(policy, parse_document(raw))
    port = free_port()  # nobody answers there: no reading, so nothing counted
    local, everywhere = ProxyRegistry(), ProxyRegistry()
    for i, registry in ((1, local), (1, everywhere), (2, everywhere), (3, everywhere)):
        registry.connect(ProxyStatus(f"edge-{i}", "edge", "edge", i, admin_address=f"127.0.0.1:{port}"))
    given: list[dict[str, dict[str, Allowance]]] = []
    keeper = UsageKeeper(local, lambda: policy, store, given.append, everywhere=everywhere.proxies, clock=lambda: now)
    async with aiohttp.ClientSession() as session:
        await keeper.cycle(session)
        await keeper.cycle(session)  # nothing used, nothing moved: nothing given again
    (allowances,) = given
    month = allowances["edge-1"]["acme-month"]
    assert (month.tokens, month.window_used) == (200, 300)
    assert month.window_end_s == datetime.fromisoformat("2026-12-01T00:00:00+01:00").timestamp()
    await store.close()
