"""The usage keeper's arithmetic (controlplane/quota/keeper.py): what an Envoy's token counters
gained between two readings, across Envoy restarts, and which budgets a series counts in."""

from __future__ import annotations

from controlplane.policy.ai import TokenBudget
from controlplane.quota.keeper import Reading, counts_for, parse_stats

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
