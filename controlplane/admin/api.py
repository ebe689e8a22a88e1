"""The admin API (aiohttp) under /api/v1: policy CRUD, apply (and its dry run), history, tokens,
proxies. Every route but /healthz, /readyz and the OpenAPI document passes the auth middleware."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from controlplane.admin.apikeys import ApiKeysApi
from controlplane.admin.auth import auth_middleware
from controlplane.admin.history import HistoryApi, preview
from controlplane.admin.openapi import openapi_document
from controlplane.admin.tokens import TokensApi
from controlplane.auth import Authenticator
from controlplane.policy import InvalidPolicy, Policy, Problem, documents_of, parse_document, with_document, without_object
from controlplane.policy.documents import KIND_BY_PLURAL, Document
from controlplane.store import Conflict, Store, StoreUnavailable
from controlplane.translate import Options
from controlplane.web.errors import error
from controlplane.web.writes import commit_change, etag, expected_revision, int_param, json_body
from controlplane.xds import Fleet
from controlplane.xds.status import STATES, fleet_page

log = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024
PROXIES_PAGE, PROXIES_PAGE_MAX = 1000, 5000  # proxies per /api/v1/proxies answer: default, most


class AdminApi:
    def __init__(self, store: Store, fleet: Fleet, registry: CollectorRegistry, *, authenticator: Authenticator,
                 options: Options, replica: Callable[[], dict[str, Any]],
                 readiness: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]) -> None:
        self._store = store
        self._fleet = fleet
        self._registry = registry
        self._authenticator = authenticator
        self._options = options
        self._replica = replica
        self._readiness = readiness

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY,
                              middlewares=[self._errors, auth_middleware(self._authenticator)])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/api/v1/openapi.json", self.openapi)
        app.router.add_get("/api/v1/policy", self.get_policy)
        app.router.add_post("/api/v1/apply", self.apply)
        app.router.add_get("/api/v1/proxies", self.proxies)
        app.router.add_get("/api/v1/replica", self.replica)
        app.router.add_routes(HistoryApi(self._store, self._fleet).routes())
        app.router.add_routes(TokensApi(self._store, self._authenticator).routes())
        app.router.add_routes(ApiKeysApi(self._store, self._fleet.convergence.revision_written).routes())
        app.router.add_get("/api/v1/{plural}", self.list_objects)
        app.router.add_get("/api/v1/{plural}/{name}", self.get_object)
        app.router.add_put("/api/v1/{plural}/{name}", self.put_object)
        app.router.add_delete("/api/v1/{plural}/{name}", self.delete_object)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except InvalidPolicy as exc:
            return error(422, "invalid policy", exc.problems)
        except Conflict as exc:
            return error(409, str(exc), revision=exc.actual)
        except StoreUnavailable as exc:
            current = await self._store.current()
            if request.method in ("GET", "HEAD"):
                return error(503, f"policy store unavailable: {exc}; this needs the store, while "
                                  f"GET /api/v1/policy still answers with revision {current.number}")
            return error(503, f"policy store unavailable: {exc}; nothing was changed and revision "
                              f"{current.number} keeps serving: retry when the store is back")
        except web.HTTPException:
            raise
        except Exception:
            # A bug: the traceback goes to the log, never to the client (it may name paths or data).
            log.exception("%s %s failed", request.method, request.path)
            return error(500, "internal error; the control plane's log has the details")

    async def healthz(self, _: web.Request) -> web.Response:
        current = await self._store.current()
        return web.json_response({"status": "ok", "revision": current.number})

    async def readyz(self, _: web.Request) -> web.Response:
        ready, checks = await self._readiness()
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, _: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    async def get_policy(self, _: web.Request) -> web.Response:
        current = await self._store.current()
        return web.json_response(
            {"revision": current.number, "documents": [d.dump() for d in documents_of(current.policy)]},
            headers={"ETag": etag(current.number)},
        )

    async def proxies(self, request: web.Request) -> web.Response:
        """Counts over the whole fleet, and a page of proxies (`state`, `offset`, `limit`)."""
        state = request.query.get("state")
        if state is not None and state not in STATES:
            return error(400, f"state must be one of {', '.join(STATES)}, not {state!r}")
        offset = max(0, int_param(request, "offset", request.query.get("offset", "0")))
        limit = max(1, min(int_param(request, "limit", request.query.get("limit", str(PROXIES_PAGE))), PROXIES_PAGE_MAX))
        current = await self._store.current()
        return web.json_response(fleet_page(self._fleet.connected.proxies(), current.number, state, offset, limit))

    async def replica(self, _: web.Request) -> web.Response:
        current = await self._store.current()
        return web.json_response({**self._replica(), "revision": current.number})

    def _kind(self, request: web.Request) -> str:
        plural = request.match_info["plural"]
        if plural not in KIND_BY_PLURAL:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"no such collection {plural!r}; known: {', '.join(sorted(KIND_BY_PLURAL))}"}),
                content_type="application/json",
            )
        return plural

    async def list_objects(self, request: web.Request) -> web.Response:
        plural = self._kind(request)
        current = await self._store.current()
        kind = KIND_BY_PLURAL[plural]
        items = [Document(kind.name, n, s).dump() for n, s in sorted(getattr(current.policy, plural).items())]
        return web.json_response({"revision": current.number, "items": items}, headers={"ETag": etag(current.number)})

    async def get_object(self, request: web.Request) -> web.Response:
        plural, name = self._kind(request), request.match_info["name"]
        current = await self._store.current()
        spec = getattr(current.policy, plural).get(name)
        if spec is None:
            return error(404, f"{KIND_BY_PLURAL[plural].name} {name!r} not found")
        doc = Document(KIND_BY_PLURAL[plural].name, name, spec).dump()
        return web.json_response(doc, headers={"ETag": etag(current.number)})

    async def put_object(self, request: web.Request) -> web.Response:
        plural, name = self._kind(request), request.match_info["name"]
        kind = KIND_BY_PLURAL[plural].name
        raw = await json_body(request)
        if isinstance(raw, dict) and "spec" not in raw and "kind" not in raw:
            raw = {"spec": raw}  # a bare spec is accepted too
        if isinstance(raw, dict):
            raw = {"kind": kind, "name": name, **raw}
        doc = parse_document(raw)
        if (doc.kind, doc.name) != (kind, name):
            raise InvalidPolicy([Problem(loc="name", msg=f"body names {doc.kind} {doc.name!r}, URL names {kind} {name!r}")])
        return await self._write(request, lambda p: with_document(p, doc), f"put {kind} {name}")

    async def apply(self, request: web.Request) -> web.Response:
        raw = await json_body(request)
        if not isinstance(raw, dict) or not isinstance(raw.get("documents"), list):
            raise InvalidPolicy([Problem(loc="documents", msg="expected a list of documents")])
        problems: list[Problem] = []
        docs: list[Document] = []
        for i, item in enumerate(raw["documents"]):
            try:
                docs.append(parse_document(item, where=f"documents.{i}"))
            except InvalidPolicy as exc:
                problems.extend(exc.problems)
        if problems:
            raise InvalidPolicy(problems)

        def apply_all(policy: Policy) -> Policy:
            for doc in docs:
                policy = with_document(policy, doc)
            return policy

        if request.query.get("dry_run", "false").lower() in ("true", "1", "yes"):
            return await self._dry_run(request, apply_all)
        return await self._write(request, apply_all, "apply " + ", ".join(f"{d.kind} {d.name}" for d in docs))

    async def _dry_run(self, request: web.Request, change: Callable[[Policy], Policy]) -> web.Response:
        """Validate as a write would and show what would change, in the policy and in Envoy."""
        expected = expected_revision(request)
        current = await self._store.current()
        proposed = change(current.policy)
        if problems := proposed.problems():
            raise InvalidPolicy(problems)
        if expected is not None and expected != current.number:
            raise Conflict(expected, current.number)
        return web.json_response(preview(current, proposed, self._options), headers={"ETag": etag(current.number)})

    async def delete_object(self, request: web.Request) -> web.Response:
        plural, name = self._kind(request), request.match_info["name"]
        kind = KIND_BY_PLURAL[plural].name
        current = await self._store.current()
        if name not in getattr(current.policy, plural):
            return error(404, f"{kind} {name!r} not found")
        users_of: dict[str, Callable[[str], list[str]]] = {
            "backends": current.policy.users_of_backend, "services": current.policy.users_of_service,
            "tenants": current.policy.users_of_tenant}
        users = users_of[plural](name) if plural in users_of else []
        if users:
            return error(409, f"{kind} {name!r} is still used by {', '.join(users)}", used_by=users)
        return await self._write(request, lambda p: without_object(p, plural, name), f"delete {kind} {name}")

    async def _write(self, request: web.Request, change: Callable[[Policy], Policy], message: str) -> web.Response:
        return await commit_change(self._store, self._fleet.convergence.revision_written, request, change, message)
