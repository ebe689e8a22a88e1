"""A month's token budget, global across edge Envoys and kept by the control plane in its store
(controlplane/quota/keeper.py): real Envoys, the real generative backend, the real control plane
with a test clock (a file it reads, SLUICE_CLOCK_FILE) that the test moves across the month's
end in Europe/Berlin; once with each store (SQLite, a Redis of its own)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from harness import Backend, ControlPlane, Envoy, http, wait_until

from controlplane.store import open_store

SERVED = "tiny-llama"
KEY = "sk-test-month-" + "m" * 16
TOKENS = 400
INTERVAL_S = 0.2
NOVEMBER = "acme-month/2026-11-01T00:00:00+01:00"
DECEMBER = "acme-month/2026-12-01T00:00:00+01:00"
# A request whose reservation (body bytes / 4 + max_tokens) is above its real cost.
REQUEST = {"model": "fast", "prompt": "hi", "max_tokens": 8, "ignore_eos": True}
ESTIMATE = (len(json.dumps(REQUEST).encode()) + 3) // 4 + 8


def set_clock(path: Path, local: str) -> None:
    """The control plane's time for budget windows, written whole (it may read at any moment)."""
    scratch = path.with_suffix(".new")
    scratch.write_text(str(datetime.fromisoformat(local).timestamp()))
    os.replace(scratch, path)


def send(envoy: Envoy) -> tuple[int, dict[str, str], bytes]:
    return http("POST", f"{envoy.url}/v1/completions", REQUEST, {"Authorization": f"Bearer {KEY}"}, timeout=30)


def left_told(envoy: Envoy) -> int:
    """What a refusal says is left of this Envoy's allowance (RateLimit header, in tokens)."""
    status, headers, body = send(envoy)
    assert status == 429, body
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded" and int(headers["retry-after"]) >= 1
    return int(re.search(r";r=(\d+);", headers["ratelimit"])[1])  # type: ignore[index]


def stored(cp: ControlPlane, key: str = NOVEMBER) -> int:
    async def read() -> int:
        store = await open_store(cp.store)
        try:
            return (await store.usage([key]))[key]
        finally:
            await store.close()

    return asyncio.run(read())


def admitted(envoy: Envoy, used: list[int]) -> bool:
    status, _, answer = send(envoy)
    if status == 200:
        used.append(json.loads(answer)["usage"]["total_tokens"])
    return status == 200


def refused_for(envoys: list[Envoy], seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for envoy in envoys:
            assert send(envoy)[0] == 429
        time.sleep(INTERVAL_S / 2)


def spent_until_refused(envoys: list[Envoy], used: list[int]) -> None:
    """Send until every Envoy has refused for a while; what is admitted meanwhile goes to `used`."""
    last_admitted = time.monotonic()
    while time.monotonic() - last_admitted < 5 * INTERVAL_S:
        for envoy in envoys:
            if admitted(envoy, used):
                last_admitted = time.monotonic()
        time.sleep(INTERVAL_S / 2)


def test_monthly_budget_survives_restarts_and_resets_at_the_month_boundary(
        tmp_path: Path, model_repository: Path, start_envoy: Callable[..., Envoy], store_url: str) -> None:
    clock = tmp_path / "clock"
    set_clock(clock, "2026-11-30T22:00:00+01:00")
    cp = ControlPlane.start(tmp_path, store_url,
                            env={"SLUICE_CLOCK_FILE": str(clock), "SLUICE_USAGE_INTERVAL_S": str(INTERVAL_S)})
    backend = Backend.start(tmp_path, model_repository, SERVED)
    try:
        status, body = cp.apply(
            {"kind": "Backend", "name": "a", "spec": {"endpoints": [{"address": "127.0.0.1", "port": backend.port}]}},
            {"kind": "Service", "name": "llm", "spec": {"routes": [
                {"name": "openai", "match": {"prefix": "/v1/"}, "split": [{"backend": "a"}]}]}},
            {"kind": "Model", "name": "fast", "spec": {"service": "llm", "model": "fast", "routes": ["openai"],
                                                      "backends": [{"backend": "a", "model": SERVED}]}},
            {"kind": "Tenant", "name": "acme", "spec": {"keys": [{"id": "one", "key": KEY}]}},
            {"kind": "TokenBudget", "name": "acme-month", "spec": {
                "tenant": "acme", "tokens": TOKENS, "per": "month", "zone": "Europe/Berlin",
                "soft_limit_percent": 50}})
        assert status == 200, body
        envoys = [start_envoy(cp, node_id="edge-1"), start_envoy(cp, node_id="edge-2")]
        for envoy in envoys:
            cp.wait_converged(envoy.node_id)

        # Two Envoys spend one budget: each admits up to its allowance, re-split every interval.
        used: list[int] = []
        soft: list[bool] = []  # per admitted answer: whether it said the budget is past half
        last_admitted = time.monotonic()
        while time.monotonic() - last_admitted < 10 * INTERVAL_S:
            for envoy in envoys:
                status, headers, answer = send(envoy)
                assert status in (200, 429), answer
                if status == 200:
                    used.append(json.loads(answer)["usage"]["total_tokens"])
                    soft.append(headers.get("x-sluice-budget-soft-limit") == "acme-month")
                    last_admitted = time.monotonic()
            time.sleep(INTERVAL_S / 4)
        real = sum(used)
        print(f"admitted {len(used)} requests, {real} real tokens of {TOKENS}; each reserved {ESTIMATE}")
        # Past the budget by at most a request that ended between a reading and its allowance;
        # short of it by what is split too thin for one request's reservation on each Envoy.
        assert TOKENS - 2 * ESTIMATE < real <= TOKENS + ESTIMATE
        # The soft limit counts every Envoy's usage (from the window's usage given with each allowance).
        assert not soft[0] and soft[-1], soft
        # The store holds exactly what the backend reported, from the Envoys' counters.
        wait_until(lambda: stored(cp) == real, 10, what=f"stored usage {real}")

        # An Envoy restarts: its counters start from zero; the month's usage does not.
        envoys[0].proc.stop()
        envoys[0] = start_envoy(cp, node_id="edge-1")
        wait_until(lambda: left_told(envoys[0]) > 0, 10, what="the restarted Envoy's allowance")
        refused_for(envoys, 5 * INTERVAL_S)
        assert stored(cp) == real

        # The control plane crashes (SIGKILL) and restarts: usage and readings come back from the store.
        cp.restart()
        for envoy in envoys:
            cp.wait_converged(envoy.node_id, timeout=30)
        # Until both Envoys are back, the keeper splits what is left among those that are: the
        # first back may be given all of it (here more than one request's reservation) and admit
        # a request. The budget still holds, and nothing is counted twice.
        again: list[int] = []
        spent_until_refused(envoys, again)
        real += sum(again)
        assert real <= TOKENS + ESTIMATE, f"{again} admitted after the restart"
        wait_until(lambda: stored(cp) == real, 10, what=f"stored usage {real}")

        # One second before December in Berlin (22:59:59 UTC): still November's budget.
        set_clock(clock, "2026-11-30T23:59:59+01:00")
        refused_for(envoys, 10 * INTERVAL_S)
        # December: a new window with nothing used, at the next reading.
        set_clock(clock, "2026-12-01T00:00:00+01:00")
        december: list[int] = []
        for envoy in envoys:
            wait_until(lambda e=envoy: admitted(e, december), 5, what=f"{envoy.node_id} admits in December")  # type: ignore[misc]
        assert stored(cp) == real  # November keeps its count
        wait_until(lambda: stored(cp, DECEMBER) == sum(december), 10, what="December's usage stored")

        # While the control plane is down the Envoys go on with their allowances; what they
        # admit meanwhile is counted when it is back (from the readings it stored).
        cp.proc.kill()
        for envoy in envoys:
            assert admitted(envoy, december)
        cp.proc.start()
        cp.wait_ready()
        wait_until(lambda: stored(cp, DECEMBER) == sum(december), 10, what="usage while down counted")
        assert stored(cp) == real
    finally:
        backend.proc.stop()
        cp.proc.stop()
