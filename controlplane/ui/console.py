"""The web console: static pages at /ui/ and the summaries they poll at /ui/api/.

The pages themselves hold no data and are public (the browser cannot send a bearer token when
it navigates); every summary under /ui/api/ passes the admin API's auth middleware like any
GET (viewer), and the pages act only through the admin API's own endpoints (operator).

Live updates are polling, once a second, of one summary per page: an EventSource cannot send
an `Authorization` header (SSE would need the token in the URL, where logs keep it), polling
needs no long-lived connection per browser on each replica, and every summary is bounded
(a page of rows plus counts), so a fleet of 1,000 proxies costs the same per poll as one.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from controlplane.store import Store
from controlplane.ui.paths import is_console_page
from controlplane.ui.views import ConsoleViews
from controlplane.xds import ProxyRegistry

STATIC = Path(__file__).resolve().parent / "static"
def install(app: web.Application, store: Store, fleet: ProxyRegistry) -> None:
    """Serve the console from the admin API's application (so its auth middleware applies)."""
    views = ConsoleViews(store, fleet)

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def to_index(_: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    async def close(_: web.Application) -> None:
        await views.close()

    app.router.add_get("/ui", to_index)
    app.router.add_get("/ui/", index)
    app.router.add_routes(views.routes())
    app.router.add_static("/ui/assets", STATIC, show_index=False, append_version=False)
    app.on_cleanup.append(close)


__all__ = ["install", "is_console_page"]
