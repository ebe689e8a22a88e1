"""The whole policy at one revision, and the rules that span its objects.

Each rule reports like a pydantic error, a dotted path and why, so every rejection names the
field that caused it.
"""

from __future__ import annotations

from controlplane.policy import filter_limits as limits
from controlplane.policy.ai import (
    BUDGETS_MAX,
    BUDGETS_PER_REQUEST_MAX,
    ENTRY_ROUTES_MAX,
    KEYS_MAX,
    MODELS_MAX,
    Model,
    Tenant,
    TokenBudget,
)
from controlplane.policy.canary import Canary, CanaryStatus, finished, shadow_backend_name
from controlplane.policy.geo import Geo, GeoRoute
from controlplane.policy.model import Backend, Edge, Name, RateLimit, Service, Strict
from controlplane.policy.telemetry import TELEMETRY_NAME, Telemetry


class Problem(Strict):
    """A rule broken across objects, reported like a pydantic error: a dotted path and why."""

    loc: str
    msg: str


MAX_RATELIMITS = limits.RATELIMIT_POLICIES_MAX  # the filter's fixed policy table


class Policy(Strict):
    backends: dict[Name, Backend] = {}
    services: dict[Name, Service] = {}
    ratelimits: dict[Name, RateLimit] = {}
    edges: dict[Name, Edge] = {}
    canaries: dict[Name, Canary] = {}
    # Written by the canary controller, not by operators: where each canary stands.
    canary_status: dict[Name, CanaryStatus] = {}
    geo: dict[Name, Geo] = {}
    georoutes: dict[Name, GeoRoute] = {}
    telemetry: dict[Name, Telemetry] = {}
    models: dict[Name, Model] = {}
    tenants: dict[Name, Tenant] = {}
    tokenbudgets: dict[Name, TokenBudget] = {}

    @property
    def edge(self) -> Edge:
        return self.edges.get("edge", Edge())

    def routes_of(self, service: str, names: list[str]) -> list[str]:
        """Route names of a service as Envoy knows them (`service/route`); no names: all of them."""
        chosen = names or [r.name for r in self.services[service].routes]
        return [f"{service}/{r}" for r in chosen]

    def problems(self) -> list[Problem]:
        found: list[Problem] = []
        owner_of_host: dict[str, str] = {}
        for sname, service in sorted(self.services.items()):
            for h, host in enumerate(service.hosts):
                other = owner_of_host.setdefault(host.lower(), sname)
                if other != sname:
                    found.append(Problem(loc=f"services.{sname}.hosts.{h}",
                                         msg=f"host {host!r} is already served by service {other!r}"))
            for r, route in enumerate(service.routes):
                for where, backend in route.backends_named():
                    if backend not in self.backends:
                        found.append(Problem(loc=f"services.{sname}.routes.{r}.{where}",
                                             msg=f"unknown backend {backend!r}"))
        for name in self.edges:
            if name != "edge":
                found.append(Problem(loc=f"edges.{name}", msg="the Edge object must be named 'edge'"))
        for name in self.telemetry:
            if name != TELEMETRY_NAME:
                found.append(Problem(loc=f"telemetry.{name}", msg=f"the Telemetry object must be named '{TELEMETRY_NAME}'"))
        if len(self.ratelimits) > MAX_RATELIMITS:
            found.append(Problem(loc="ratelimits", msg=f"at most {MAX_RATELIMITS} rate limits (the filter's table)"))
        for name, limit in sorted(self.ratelimits.items()):
            limited = self.services.get(limit.service)
            if limited is None:
                found.append(Problem(loc=f"ratelimits.{name}.service", msg=f"unknown service {limit.service!r}"))
                continue
            known = {r.name for r in limited.routes}
            for i, route_name in enumerate(limit.routes):
                if route_name not in known:
                    found.append(Problem(loc=f"ratelimits.{name}.routes.{i}",
                                         msg=f"service {limit.service!r} has no route {route_name!r}"))
            for route_name in limit.route_costs:
                if route_name not in known:
                    found.append(Problem(loc=f"ratelimits.{name}.route_costs.{route_name}",
                                         msg=f"service {limit.service!r} has no route {route_name!r}"))
            if not limit.routes and len(known) > 16:
                found.append(Problem(loc=f"ratelimits.{name}.routes",
                                     msg="the service has more than 16 routes: name at most 16"))
        for name, canary in sorted(self.canaries.items()):
            found.extend(self._canary_problems(name, canary))
        found.extend(self._geo_problems())
        found.extend(self._model_problems())
        return found

    def _model_problems(self) -> list[Problem]:
        found: list[Problem] = []
        if len(self.models) > MODELS_MAX:
            found.append(Problem(loc="models", msg=f"at most {MODELS_MAX} models (the llm filter's table)"))
        public: dict[tuple[str, str], str] = {}
        entries: set[tuple[str, str]] = set()
        for name, model in sorted(self.models.items()):
            where = f"models.{name}"
            other = public.setdefault((model.service, model.model), name)
            if other != name:
                found.append(Problem(loc=f"{where}.model", msg=f"Model {other!r} already serves {model.model!r} "
                                                               f"in service {model.service!r}"))
            service = self.services.get(model.service)
            if service is None:
                found.append(Problem(loc=f"{where}.service", msg=f"unknown service {model.service!r}"))
            else:
                known = {r.name for r in service.routes}
                for i, route in enumerate(model.routes):
                    entries.add((model.service, route))
                    if route not in known:
                        found.append(Problem(loc=f"{where}.routes.{i}",
                                             msg=f"service {model.service!r} has no route {route!r}"))
            named = [(f"backends.{i}.backend", b.backend) for i, b in enumerate(model.backends)]
            named += [(f"fallback.{i}", b) for i, b in enumerate(model.fallback)]
            for field, backend in named:
                if backend not in self.backends:
                    found.append(Problem(loc=f"{where}.{field}", msg=f"unknown backend {backend!r}"))
            if len({self.backends[b].protocol for _, b in named if b in self.backends}) > 1:
                found.append(Problem(loc=f"{where}.fallback", msg="the backends and fallbacks mix http1 and http2"))
        if len(entries) > ENTRY_ROUTES_MAX:
            found.append(Problem(loc="models", msg=f"at most {ENTRY_ROUTES_MAX} routes carry models (the llm filter's table)"))
        holder: dict[str, str] = {}
        for name, tenant in sorted(self.tenants.items()):
            for i, key in enumerate(tenant.keys):
                other = holder.setdefault(key.sha256, f"{name}/{key.id}")
                if other != f"{name}/{key.id}":
                    found.append(Problem(loc=f"tenants.{name}.keys.{i}", msg=f"the same key is already {other}"))
        if len(holder) > KEYS_MAX:
            found.append(Problem(loc="tenants", msg=f"at most {KEYS_MAX} API keys in all (the llm filter's table)"))
        return found + self._budget_problems()

    def _budget_problems(self) -> list[Problem]:
        found: list[Problem] = []
        if len(self.tokenbudgets) > BUDGETS_MAX:
            found.append(Problem(loc="tokenbudgets", msg=f"at most {BUDGETS_MAX} token budgets (the llm filter's table)"))
        public = {m.model for m in self.models.values()}
        per_tenant: dict[str, int] = {}
        for name, budget in sorted(self.tokenbudgets.items()):
            if budget.tenant not in self.tenants:
                found.append(Problem(loc=f"tokenbudgets.{name}.tenant", msg=f"unknown tenant {budget.tenant!r}"))
            if budget.model is not None and budget.model not in public:
                found.append(Problem(loc=f"tokenbudgets.{name}.model", msg=f"no Model serves {budget.model!r}"))
            per_tenant[budget.tenant] = per_tenant.get(budget.tenant, 0) + 1
            if per_tenant[budget.tenant] == BUDGETS_PER_REQUEST_MAX + 1:
                found.append(Problem(loc=f"tokenbudgets.{name}.tenant", msg=f"at most {BUDGETS_PER_REQUEST_MAX} "
                                     f"token budgets per tenant (a request reserves in each)"))
        return found

    def _geo_problems(self) -> list[Problem]:
        found = [Problem(loc=f"geo.{name}", msg="the Geo object must be named 'geo'")
                 for name in self.geo if name != "geo"]
        routed: dict[tuple[str, str], str] = {}
        for name, geo_route in sorted(self.georoutes.items()):
            where = f"georoutes.{name}"
            if "geo" not in self.geo:
                found.append(Problem(loc=where, msg="needs the Geo object 'geo': without it nothing sets the region "
                                                    "header, and clients could choose their region themselves"))
            service = self.services.get(geo_route.service)
            if service is None:
                found.append(Problem(loc=f"{where}.service", msg=f"unknown service {geo_route.service!r}"))
            elif geo_route.route not in {r.name for r in service.routes}:
                found.append(Problem(loc=f"{where}.route",
                                     msg=f"service {geo_route.service!r} has no route {geo_route.route!r}"))
            other = routed.setdefault((geo_route.service, geo_route.route), name)
            if other != name:
                found.append(Problem(loc=f"{where}.route", msg=f"GeoRoute {other!r} already routes this route"))
            driving = self._driving(geo_route.service, geo_route.route)
            if driving:
                found.append(Problem(loc=f"{where}.route", msg=f"canary {driving[0]!r} drives this route's split, "
                                     "which geo-routed requests do not use; " + self._release_hint(driving[0])))
            for region, target in sorted(geo_route.regions.items()):
                backend = self.backends.get(target.backend)
                if backend is None:
                    found.append(Problem(loc=f"{where}.regions.{region}.backend",
                                         msg=f"unknown backend {target.backend!r}"))
                elif backend.health_check is None:
                    found.append(Problem(loc=f"{where}.regions.{region}.backend",
                                         msg=f"backend {target.backend!r} has no health_check: without active health "
                                             "checks its region would never fail over"))
                protocols = {self.backends[b].protocol for b in geo_route.chain(region) if b in self.backends}
                if len(protocols) > 1:
                    found.append(Problem(loc=f"{where}.regions.{region}.fallback",
                                         msg="the region and its fallbacks mix http1 and http2 backends"))
        return found

    def _canary_problems(self, name: str, canary: Canary) -> list[Problem]:
        where = f"canaries.{name}"
        service = self.services.get(canary.service)
        if service is None:
            return [Problem(loc=f"{where}.service", msg=f"unknown service {canary.service!r}")]
        route = next((r for r in service.routes if r.name == canary.route), None)
        if route is None:
            return [Problem(loc=f"{where}.route", msg=f"service {canary.service!r} has no route {canary.route!r}")]
        found = [Problem(loc=f"{where}.{field}", msg=f"unknown backend {backend!r}")
                 for field, backend in (("stable", canary.stable), ("canary", canary.canary))
                 if backend not in self.backends]
        if finished(canary, self.canary_status.get(name)):
            return found  # it released the route: the route may change and another canary may take it
        if canary.shadow is not None and sum(m.backend != shadow_backend_name(name) for m in route.mirrors) >= 4:
            found.append(Problem(loc=f"{where}.shadow", msg=f"route {canary.route!r} already mirrors to 4 backends, "
                                 "the most a route takes: the shadow stage needs one more"))
        others = {w.backend for w in route.split} - {canary.stable, canary.canary}
        if others:
            found.append(Problem(loc=f"{where}.route", msg=f"route {canary.route!r} also splits to "
                                 f"{', '.join(sorted(others))}: a canary shifts between two backends only"))
        taken = [n for n in self._driving(canary.service, canary.route) if n != name]
        if taken:
            found.append(Problem(loc=f"{where}.route", msg=f"canary {taken[0]!r} already drives this route; "
                                 + self._release_hint(taken[0])))
        return found

    def _driving(self, service: str, route: str) -> list[str]:
        """Canaries that drive this route's split: every one not finished (a finished one releases it)."""
        return [n for n, c in sorted(self.canaries.items())
                if (c.service, c.route) == (service, route) and not finished(c, self.canary_status.get(n))]

    def _release_hint(self, name: str) -> str:
        status = self.canary_status.get(name)
        state = status.state.replace("_", " ") if status is not None else "pending"
        return (f"it is {state}: wait until it succeeds or rolls back, which releases the route, or end it now "
                f"with `sluice canary abort {name}` (or `sluice delete canary {name}`, which keeps the split "
                "where it stands)")

    def users_of_service(self, service: str) -> list[str]:
        return ([f"ratelimits.{n}" for n, limit in sorted(self.ratelimits.items()) if limit.service == service]
                + [f"canaries.{n}" for n, c in sorted(self.canaries.items()) if c.service == service]
                + [f"georoutes.{n}" for n, g in sorted(self.georoutes.items()) if g.service == service]
                + [f"models.{n}" for n, m in sorted(self.models.items()) if m.service == service])

    def users_of_tenant(self, tenant: str) -> list[str]:
        return [f"tokenbudgets.{n}" for n, b in sorted(self.tokenbudgets.items()) if b.tenant == tenant]

    def users_of_backend(self, backend: str) -> list[str]:
        return ([f"services.{s}.routes.{r.name}" for s, svc in sorted(self.services.items())
                 for r in svc.routes if any(b == backend for _, b in r.backends_named())]
                + [f"canaries.{n}" for n, c in sorted(self.canaries.items()) if backend in (c.stable, c.canary)]
                + [f"georoutes.{n}.regions.{r}" for n, g in sorted(self.georoutes.items())
                   for r, t in sorted(g.regions.items()) if t.backend == backend]
                + [f"models.{n}" for n, m in sorted(self.models.items())
                   if backend in {b.backend for b in m.backends} | set(m.fallback)])
