"""Policy history in the admin API: revisions, the diff of any two, roll back, audit log, and the
dry-run preview of a change (which Envoy resources it would change)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from controlplane import resources as types
from controlplane.policy import Policy, documents_of
from controlplane.store import Revision, Store
from controlplane.store.diff import policy_diff
from controlplane.translate import Options, ProxyGroup, translate
from controlplane.web.errors import error
from controlplane.web.writes import commit_change, int_param
from controlplane.xds import Fleet

# Resources differ between proxy groups only in where the listener binds, so one
# representative group shows what a change does to every proxy.
PREVIEW_GROUP = ProxyGroup("edge", "127.0.0.1", 10000)


def resource_changes(current: Policy, proposed: Policy, options: Options) -> list[dict[str, str]]:
    """`[{type, name, change}]` for every Envoy resource whose serialized form would change."""
    before = translate(current, PREVIEW_GROUP, options)
    after = translate(proposed, PREVIEW_GROUP, options)
    out = []
    for type_url in types.PUSH_ORDER:
        old, new = before.get(type_url, {}), after.get(type_url, {})
        for name in sorted(old.keys() | new.keys()):
            if name not in old:
                change = "added"
            elif name not in new:
                change = "removed"
            elif old[name].SerializeToString(deterministic=True) != new[name].SerializeToString(deterministic=True):
                change = "changed"
            else:
                continue
            out.append({"type": types.SHORT[type_url], "name": name, "change": change})
    return out


def preview(current: Revision, proposed: Policy, options: Options) -> dict[str, Any]:
    return {
        "dry_run": True,
        "revision": current.number,
        "changed": proposed != current.policy,
        "objects": policy_diff(current.policy, proposed),
        "resources": resource_changes(current.policy, proposed, options),
    }


def _summary(revision: Revision) -> dict[str, Any]:
    return {"number": revision.number, "created_at": revision.created_at, "actor": revision.actor,
            "message": revision.message}


def _limit(request: web.Request) -> int:
    return max(1, min(int_param(request, "limit", request.query.get("limit", "50")), 1000))


class HistoryApi:
    def __init__(self, store: Store, fleet: Fleet) -> None:
        self._store = store
        self._fleet = fleet

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/revisions", self.revisions),
            web.get("/api/v1/revisions/{number}", self.revision),
            web.get("/api/v1/revisions/{a}/diff/{b}", self.diff),
            web.post("/api/v1/revisions/{number}/rollback", self.rollback),
            web.get("/api/v1/audit", self.audit),
        ]

    async def _revision(self, request: web.Request, key: str) -> Revision | web.Response:
        number = int_param(request, key, request.match_info[key])
        try:
            if not 0 <= number < 2**63:  # beyond any revision number a store can hold
                raise KeyError(number)
            return await self._store.revision(number)
        except KeyError:
            return error(404, f"revision {number} does not exist")

    async def revisions(self, request: web.Request) -> web.Response:
        history = await self._store.history(_limit(request))
        return web.json_response({"revisions": [_summary(r) for r in history]})

    async def revision(self, request: web.Request) -> web.Response:
        revision = await self._revision(request, "number")
        if isinstance(revision, web.Response):
            return revision
        return web.json_response({**_summary(revision), "documents": [d.dump() for d in documents_of(revision.policy)]})

    async def diff(self, request: web.Request) -> web.Response:
        a = await self._revision(request, "a")
        if isinstance(a, web.Response):
            return a
        b = await self._revision(request, "b")
        if isinstance(b, web.Response):
            return b
        return web.json_response({"from": a.number, "to": b.number, "objects": policy_diff(a.policy, b.policy)})

    async def rollback(self, request: web.Request) -> web.Response:
        target = await self._revision(request, "number")
        if isinstance(target, web.Response):
            return target
        return await commit_change(self._store, self._fleet.convergence.revision_written, request, lambda _: target.policy,
                                   f"rollback to revision {target.number}", rolled_back_to=target.number)

    async def audit(self, request: web.Request) -> web.Response:
        return web.json_response({"entries": [e.view() for e in await self._store.audit(_limit(request))]})
