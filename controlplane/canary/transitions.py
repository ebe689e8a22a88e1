"""How a canary's state and weight are written into the policy. Pure: policy in, policy out.

The canary's weight lives where traffic reads it, in the route's split, and its state in
`Policy.canary_status`; both change in one revision, so a restart resumes where it stood.
"""

from __future__ import annotations

from controlplane.policy import Canary, CanaryEvent, CanaryStatus, Policy, Route, RouteMatch, WeightedBackend
from controlplane.policy.canary import Stage, State, shadow_backend_name
from controlplane.policy.model import Backend, Endpoint, Mirror

MAX_EVENTS = 200
ACTIONS = ("pause", "resume", "promote", "abort")


def ab_route_name(route: str) -> str:
    return f"{route[:57]}-ab"


def with_event(status: CanaryStatus, now: float, state: State, weight: int, message: str,
               gate: str | None = None, **changes: object) -> CanaryStatus:
    event = CanaryEvent(at=now, state=state, weight=weight, message=message, gate=gate)
    events = [*status.events, event][-MAX_EVENTS:]
    return status.model_copy(update={"state": state, "weight": weight, "events": events, **changes})


def apply_weight(policy: Policy, canary: Canary, weight: int, ab: bool) -> Policy:
    """Set the route's split to `weight`% canary, and add (or drop) the A/B route before it."""
    service = policy.services[canary.service]
    routes: list[Route] = []
    for route in service.routes:
        if route.name == ab_route_name(canary.route):
            continue  # re-added below if still wanted
        if route.name == canary.route:
            if ab and canary.match:
                routes.append(route.model_copy(update={
                    "name": ab_route_name(canary.route),
                    "match": RouteMatch.model_validate({**route.match.model_dump(),
                                                        "headers": [*route.match.headers, *canary.match]}),
                    "split": [WeightedBackend(backend=canary.canary, weight=100)],
                    "mirrors": [],
                }))
            split = [WeightedBackend(backend=canary.stable, weight=100 - weight),
                     WeightedBackend(backend=canary.canary, weight=weight)]
            hash_on = [h for h in route.hash_on if h != canary.sticky]
            sticky = canary.sticky is not None and 0 < weight < 100
            if canary.sticky is not None and sticky:
                hash_on.insert(0, canary.sticky)
            route = route.model_copy(update={"split": split, "hash_on": hash_on,
                                             "sticky_split": sticky or (route.sticky_split and bool(hash_on))})
        routes.append(route)
    services = {**policy.services, canary.service: service.model_copy(update={"routes": routes})}
    return policy.model_copy(update={"services": services})


def apply_shadow(policy: Policy, name: str, canary: Canary, comparator: tuple[str, int] | None) -> Policy:
    """Mirror the canary's share of the route to the comparator at `comparator` (host, port),
    or stop mirroring (None): the mirror's Backend comes and goes with it."""
    backend = shadow_backend_name(name)
    service = policy.services[canary.service]
    routes: list[Route] = []
    for route in service.routes:
        if route.name == canary.route:
            mirrors = [m for m in route.mirrors if m.backend != backend]
            if comparator is not None and canary.shadow is not None:
                mirrors.append(Mirror(backend=backend, percent=canary.shadow.percent))
            route = route.model_copy(update={"mirrors": mirrors})
        routes.append(route)
    backends = {k: v for k, v in policy.backends.items() if k != backend}
    if comparator is not None:
        # No outlier detection: an overloaded comparator sheds with 503s, and it is the only endpoint.
        backends[backend] = Backend(endpoints=[Endpoint(address=comparator[0], port=comparator[1])],
                                    outlier_detection=None)
    services = {**policy.services, canary.service: service.model_copy(update={"routes": routes})}
    return policy.model_copy(update={"services": services, "backends": backends})


def without_orphan_mirrors(policy: Policy, comparator: tuple[str, int]) -> Policy:
    """Drop the comparator's Backends (and the mirrors naming them) that no shadowing canary owns:
    what a canary deleted in its shadow stage leaves behind."""
    owned = {shadow_backend_name(n) for n, s in policy.canary_status.items()
             if n in policy.canaries and s.stage == "shadow" and s.state in ("progressing", "paused")}
    orphans = {name for name, b in policy.backends.items() if name.endswith("-shadow") and name not in owned
               and [(e.address, e.port) for e in b.endpoints] == [comparator]}
    if not orphans:
        return policy
    services = {name: service.model_copy(update={"routes": [
        r.model_copy(update={"mirrors": [m for m in r.mirrors if m.backend not in orphans]}) for r in service.routes]})
        for name, service in policy.services.items()}
    backends = {k: v for k, v in policy.backends.items() if k not in orphans}
    return policy.model_copy(update={"services": services, "backends": backends})


def apply_stage(policy: Policy, name: str, canary: Canary, stage: Stage | None, weight: int,
                comparator: tuple[str, int] | None) -> Policy:
    """The route as a stage wants it: shadow mirrors (no A/B route, weight 0); A/B and the
    weighted steps send `match` requests and `weight`% of the rest to the canary."""
    policy = apply_weight(policy, canary, weight, ab=stage in ("ab", "weighted"))
    return apply_shadow(policy, name, canary, comparator if stage == "shadow" else None)


def released(policy: Policy, name: str, canary: Canary, weight: int) -> Policy:
    """The route once the canary has finished: all on one version, no A/B route, no mirror."""
    return apply_stage(policy, name, canary, None, weight, None)


def weight_in_policy(policy: Policy, canary: Canary) -> int | None:
    route = next((r for r in policy.services[canary.service].routes if r.name == canary.route), None)
    if route is None:
        return None
    weights = {w.backend: w.weight for w in route.split}
    total = sum(weights.values())
    return None if total == 0 else round(100 * weights.get(canary.canary, 0) / total)


def with_status(policy: Policy, name: str, status: CanaryStatus) -> Policy:
    return policy.model_copy(update={"canary_status": {**policy.canary_status, name: status}})


def operate(policy: Policy, name: str, action: str, now: float) -> Policy:
    """An operator's pause, resume, promote or abort. Raises ValueError when it makes no sense now."""
    canary = policy.canaries[name]
    status = policy.canary_status.get(name, CanaryStatus())
    if status.state in ("succeeded", "rolled_back"):
        raise ValueError(f"canary {name!r} has already {status.state.replace('_', ' ')}")
    if action == "pause":
        if status.state == "paused":
            raise ValueError(f"canary {name!r} is already paused")
        status = with_event(status, now, "paused", status.weight, "paused by an operator", paused_state=status.state)
    elif action == "resume":
        if status.state != "paused":
            raise ValueError(f"canary {name!r} is not paused")
        status = with_event(status, now, status.paused_state or "progressing", status.weight,
                            "resumed by an operator", paused_state=None, step_started_at=now)
    elif action == "promote":
        status = with_event(status, now, "promoting", status.weight, "promotion requested by an operator",
                            paused_state=None)
    elif action == "abort":
        status = with_event(status, now, "rolled_back", 0, "aborted by an operator", paused_state=None)
        policy = released(policy, name, canary, 0)
    else:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    return with_status(policy, name, status)
