"""The summaries the console polls: bounded pages and counts, never the whole fleet.

Live figures come from where they live: proxies' ACK/NACK from the xDS fleet, backend health
from an edge Envoy's membership counters, rate-limit counters from edge Envoys' /stats/prometheus, and
backend load (queue, running, KV use) from the backends' own /metrics. Each is read at most
once a second whatever the number of browsers (a small cache), from a bounded number of
Envoys and endpoints, with short timeouts.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from controlplane.policy import CanaryStatus, Policy
from controlplane.store import Store
from controlplane.web.principal import PRINCIPAL
from controlplane.xds import ProxyRegistry

PAGE_MAX = 100
EDGES_READ = 16  # rate-limit counters are summed over at most this many edge Envoys
ENDPOINTS_READ = 100  # backend endpoints scraped per page
CACHE_S = 1.0
TIMEOUT_S = 1.0

_RATELIMIT = re.compile(r'^sluice_ratelimit_(requests|allowed|limited|shadow_limited)\{policy="([^"]*)"\} (\S+)$')
_MEMBERSHIP = re.compile(r'^envoy_cluster_membership_(healthy|total)\{envoy_cluster_name="([^"]*)"\} (\S+)$')
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')
LOAD_METRICS = {
    "nv_inference_pending_request_count": "queue",
    "vllm:num_requests_waiting": "waiting",
    "vllm:num_requests_running": "running",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
}


def _page(request: web.Request, default: int = 25) -> tuple[int, int, str]:
    def number(key: str, fallback: int) -> int:
        try:
            return int(request.query.get(key, fallback))
        except ValueError:
            raise web.HTTPBadRequest(text=f"{key} must be an integer", content_type="text/plain") from None
    size = max(1, min(number("size", default), PAGE_MAX))
    return max(0, number("page", 0)), size, request.query.get("q", "").strip().lower()[:200]


def _paged(items: list[Any], page: int, size: int) -> dict[str, Any]:
    pages = max(1, math.ceil(len(items) / size))
    page = min(page, pages - 1)
    return {"total": len(items), "page": page, "pages": pages, "size": size,
            "items": items[page * size:(page + 1) * size]}


class Cache:
    """Values read from elsewhere, each read at most once per CACHE_S, concurrent readers share it."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[float, Any]] = {}
        self._pending: dict[str, asyncio.Future[Any]] = {}

    async def get(self, key: str, read: Callable[[], Awaitable[Any]]) -> Any:
        hit = self._values.get(key)
        if hit is not None and time.monotonic() - hit[0] < CACHE_S:
            return hit[1]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            value = await read()
            self._values[key] = (time.monotonic(), value)
            if len(self._values) > 4096:
                self._values.clear()
            future.set_result(value)
            return value
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        finally:
            del self._pending[key]


class ConsoleViews:
    def __init__(self, store: Store, fleet: ProxyRegistry) -> None:
        self._store = store
        self._fleet = fleet
        self._cache = Cache()
        self._session: aiohttp.ClientSession | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/ui/api/session", self.session),
            web.get("/ui/api/overview", self.overview),
            web.get("/ui/api/routes", self.routes_view),
            web.get("/ui/api/canaries", self.canaries),
            web.get("/ui/api/limits", self.limits),
            web.get("/ui/api/backends", self.backends),
        ]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        return self._session

    async def _text(self, url: str) -> str | None:
        try:
            async with self._http().get(url) as r:
                return await r.text() if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            return None

    async def _json(self, url: str) -> Any:
        try:
            async with self._http().get(url) as r:
                return await r.json(content_type=None) if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    def _edges(self) -> list[str]:
        return [p.admin_address for p in self._fleet.proxies() if p.cluster == "edge" and p.admin_address]

    # -- who is looking --------------------------------------------------------------------

    async def session(self, request: web.Request) -> web.Response:
        principal = request.get(PRINCIPAL)
        if principal is None:  # tokens not in force (loopback, or --auth off): the API lets anyone act
            return web.json_response({"name": None, "role": "admin", "can_act": True, "tokens": False})
        return web.json_response({"name": principal.name, "role": principal.role,
                                  "can_act": principal.role in ("operator", "admin"), "tokens": True})

    # -- overview: revision, proxies, the mesh picture ---------------------------------------

    async def overview(self, request: web.Request) -> web.Response:
        page, size, query = _page(request, 25)
        current = await self._store.current()
        proxies = self._fleet.proxies()
        counts = {"total": len(proxies), "current": 0, "behind": 0, "nacked": 0}
        rows = []
        for p in proxies:
            state = p.state(current.number)
            counts[state] += 1
            if query and query not in p.node_id.lower() and query not in p.cluster.lower() and query != state:
                continue
            rows.append({**p.view(), "state": state})
        health = await self._health()
        mesh = self._mesh(current.policy, health, page=request.query.get("mesh_page", "0"))
        return web.json_response({"revision": current.number, "proxies": {**counts, **_paged(rows, page, size)},
                                  "mesh": mesh})

    def _mesh(self, policy: Policy, health: dict[str, dict[str, int]], page: str) -> dict[str, Any]:
        """edge → routes → backends, a page of at most 12 routes (the picture stays legible)."""
        try:
            number = max(0, int(page))
        except ValueError:
            number = 0
        routes = [self._route(policy, s, r) for s, svc in sorted(policy.services.items()) for r in svc.routes]
        paged = _paged(routes, number, 12)
        used = sorted({w["backend"] for r in paged["items"] for w in r["split"]})
        return {**paged, "edges": sum(1 for p in self._fleet.proxies() if p.cluster == "edge"),
                "backends": [{"name": b, **health.get(b, {"healthy": None, "total": None})} for b in used]}

    @staticmethod
    def _route(policy: Policy, service: str, route: Any) -> dict[str, Any]:
        canary = next((n for n, c in sorted(policy.canaries.items())
                       if (c.service, c.route) == (service, route.name)), None)
        total = sum(w.weight for w in route.split) or 1
        return {"service": service, "name": route.name, "id": f"{service}/{route.name}",
                "match": route.match.model_dump(mode="json", exclude_defaults=True),
                "split": [{"backend": w.backend, "weight": w.weight, "percent": round(100 * w.weight / total, 1)}
                          for w in route.split],
                "canary": canary}

    async def routes_view(self, request: web.Request) -> web.Response:
        page, size, query = _page(request, 25)
        current = await self._store.current()
        policy = current.policy
        routes = [self._route(policy, s, r) for s, svc in sorted(policy.services.items()) for r in svc.routes
                  if not query or query in f"{s}/{r.name}" or any(query in w.backend for w in r.split)]
        return web.json_response({"revision": current.number, **_paged(routes, page, size)})

    # -- backend health (one edge's view) ---------------------------------------------------

    async def _health(self) -> dict[str, dict[str, int]]:
        edges = self._edges()
        if not edges:
            return {}
        return await self._cache.get(f"health:{edges[0]}", lambda: self._read_health(edges[0]))  # type: ignore[no-any-return]

    async def _read_health(self, admin: str) -> dict[str, dict[str, int]]:
        """Healthy and total endpoints per cluster, from the counters (a read-only stats listener
        in front of the admin interface serves them too)."""
        text = await self._text(f"http://{admin}/stats/prometheus?filter=membership_(healthy|total)$")
        out: dict[str, dict[str, int]] = {}
        for line in (text or "").splitlines():
            m = _MEMBERSHIP.match(line)
            if m:
                out.setdefault(m.group(2), {"healthy": 0, "total": 0})[m.group(1)] = int(float(m.group(3)))
        return out

    # -- canaries -----------------------------------------------------------------------------

    async def canaries(self, _: web.Request) -> web.Response:
        current = await self._store.current()
        items = []
        for name, canary in sorted(current.policy.canaries.items()):
            status = current.policy.canary_status.get(name, CanaryStatus())
            items.append({"name": name, "service": canary.service, "route": canary.route, "stable": canary.stable,
                          "canary": canary.canary, "state": status.state, "stage": status.stage, "weight": status.weight,
                          "step": status.step, "steps": canary.weights()})
        return web.json_response({"revision": current.number, "items": items})

    # -- rate limits ----------------------------------------------------------------------------

    async def limits(self, _: web.Request) -> web.Response:
        current = await self._store.current()
        edges = self._edges()
        read = edges[:EDGES_READ]
        counters = await self._cache.get("limits:" + ",".join(read), lambda: self._read_limits(read))
        items = []
        for name, limit in sorted(current.policy.ratelimits.items()):
            items.append({"name": name, "service": limit.service, "routes": limit.routes, "rate": limit.rate,
                          "burst": limit.burst, "scope": limit.scope, "shadow": limit.shadow,
                          "key": [k.model_dump(mode="json", exclude_none=True) for k in limit.key],
                          "counters": counters.get(name, {})})
        return web.json_response({"revision": current.number, "edges": len(edges), "edges_read": len(read),
                                  "at": time.time(), "items": items})

    async def _read_limits(self, admins: list[str]) -> dict[str, dict[str, float]]:
        texts = await asyncio.gather(*(self._text(f"http://{a}/stats/prometheus?filter=sluice_ratelimit")
                                       for a in admins))
        out: dict[str, dict[str, float]] = {}
        for text in texts:
            for line in (text or "").splitlines():
                m = _RATELIMIT.match(line)
                if m:
                    counts = out.setdefault(m.group(2), {})
                    counts[m.group(1)] = counts.get(m.group(1), 0.0) + float(m.group(3))
        return out

    # -- backends and models ---------------------------------------------------------------------

    async def backends(self, request: web.Request) -> web.Response:
        page, size, query = _page(request, 20)
        current = await self._store.current()
        names = [n for n in sorted(current.policy.backends) if not query or query in n]
        paged = _paged(names, page, size)
        health = await self._health()
        endpoints = [(n, f"{e.address}:{e.port}" if ":" not in e.address else f"[{e.address}]:{e.port}")
                     for n in paged["items"] for e in current.policy.backends[n].endpoints][:ENDPOINTS_READ]
        loads = await asyncio.gather(*(self._cache.get(f"load:{ep}", functools.partial(self._read_load, ep))
                                       for _, ep in endpoints))
        by_backend: dict[str, list[dict[str, Any]]] = {}
        for (name, ep), load in zip(endpoints, loads, strict=True):
            by_backend.setdefault(name, []).append({"endpoint": ep, **load})
        items = []
        for name in paged["items"]:
            backend = current.policy.backends[name]
            items.append({"name": name, "protocol": backend.protocol, "lb_policy": backend.lb_policy,
                          "health": health.get(name), "endpoints": by_backend.get(name, [])})
        return web.json_response({"revision": current.number, **paged, "items": items})

    async def _read_load(self, endpoint: str) -> dict[str, Any]:
        text = await self._text(f"http://{endpoint}/metrics")
        if text is None:
            return {"reachable": False}
        out: dict[str, Any] = {"reachable": True, "models": []}
        models: set[str] = set()
        for line in text.splitlines():
            m = _SAMPLE.match(line)
            if m is None:
                continue
            key = LOAD_METRICS.get(m.group(1))
            labels = m.group(2) or ""
            model = re.search(r'(?:model|model_name)="([^"]*)"', labels)
            if model:
                models.add(model.group(1))
            if key is None:
                continue
            try:
                value = float(m.group(3))
            except ValueError:
                continue
            out[key] = max(out.get(key, 0.0), value) if key == "kv_cache_usage" else out.get(key, 0.0) + value
        out["models"] = sorted(models)
        return out

