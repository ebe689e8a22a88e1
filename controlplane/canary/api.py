"""Canary endpoints beside the generic CRUD (`/api/v1/canaries/{name}` is a policy object):
its live status and the operators' actions."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from aiohttp import web

from controlplane.canary.controller import CanaryController
from controlplane.canary.metrics import Window
from controlplane.canary.transitions import ACTIONS, operate
from controlplane.policy import CanaryStatus
from controlplane.store import Conflict, Store
from controlplane.web.principal import actor


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _ratios(stable: Window, canary: Window, min_requests: int) -> dict[str, float | None]:
    """The relative gates' figures so far: canary against stable in the same window (none
    while either side has fewer than `min_requests`, as the gates themselves)."""
    if min(stable.requests, canary.requests) < min_requests:
        return {"success_rate_drop": None, "p99_ratio": None}
    return {
        "success_rate_drop": None if stable.success_rate is None or canary.success_rate is None
        else stable.success_rate - canary.success_rate,
        "p99_ratio": None if not stable.p99_ms or canary.p99_ms is None else canary.p99_ms / stable.p99_ms,
    }


def routes(store: Store, controller: CanaryController) -> list[web.RouteDef]:
    async def status(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        current = await store.current()
        canary = current.policy.canaries.get(name)
        if canary is None:
            return _error(404, f"Canary {name!r} not found")
        state = current.policy.canary_status.get(name, CanaryStatus())
        body: dict[str, Any] = {"name": name, "revision": current.number, "spec": canary.model_dump(mode="json"),
                                "status": state.model_dump(mode="json"), "steps": canary.weights()}
        live = controller.live(name)
        so_far = await controller.peek(name, canary) if state.state in ("progressing", "promoting") else None
        if live is not None and so_far is not None:
            shadow = controller.shadow_so_far(name) if state.stage == "shadow" else None
            body["window"] = {
                "started_at": live.started,
                "next_decision_at": live.started + canary.interval_s,
                "stable": asdict(so_far[0]),
                "canary": asdict(so_far[1]),
                "vs_stable": _ratios(*so_far, canary.thresholds.min_requests),
                "shadow": None if shadow is None else shadow.figures(),
                "last_shadow": None if live.shadow is None else live.shadow.figures(),
                "generation": None if live.generation is None else {
                    "stable": asdict(live.generation[0]), "canary": asdict(live.generation[1])},
                "last_verdict": None if live.judgement is None else {
                    "verdict": live.judgement.verdict.value, "reason": live.judgement.reason,
                    "gate": live.judgement.gate},
            }
        return web.json_response(body)

    async def act(request: web.Request) -> web.Response:
        name, action = request.match_info["name"], request.match_info["action"]
        if action not in ACTIONS:
            return _error(404, f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        for _ in range(5):
            current = await store.current()
            if name not in current.policy.canaries:
                return _error(404, f"Canary {name!r} not found")
            try:
                updated = operate(current.policy, name, action, time.time())
            except ValueError as exc:
                return _error(409, str(exc))
            try:
                revision = await store.commit(updated, expected=current.number, actor=actor(request),
                                              message=f"canary {name}: {action}")
            except Conflict:
                continue  # the controller wrote first; apply the action on top of its revision
            return web.json_response({"revision": revision.number,
                                      "status": updated.canary_status[name].model_dump(mode="json")})
        return _error(503, "too many concurrent writes; retry")

    return [
        web.get("/api/v1/canaries/{name}/status", status),
        web.post("/api/v1/canaries/{name}/{action}", act),
    ]
