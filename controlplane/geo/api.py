"""Geo table endpoints beside the generic CRUD (`/api/v1/geo/geo` is the Geo policy object):

  POST /api/v1/geo/table          a CSV (text/csv) or a MaxMind DB (application/octet-stream, or
                                  ?format=mmdb): imported whole or refused whole (422 listing the
                                  bad rows by line number); stored as a blob, then the Geo object
                                  names it in a new revision. If-Match works as for any write.
  GET  /api/v1/geo/table/info     the table in force: where it comes from, its size, its labels
                                  with each region as the filter will set it.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from controlplane.geo.imports import imported
from controlplane.geo.tables import GeoTables
from controlplane.geotable.compact import settings
from controlplane.geotable.table import GeoTable, TableError, inline_table
from controlplane.policy import InvalidPolicy, Policy, Problem
from controlplane.policy.geo import Geo
from controlplane.store import Store
from controlplane.web.errors import error
from controlplane.web.writes import Written, commit_change

UPLOAD_BYTES_MAX = 64 * 1024 * 1024  # a GeoLite2-Country database is ~10 MB, its CSV ~30 MB
MMDB_TYPES = ("application/octet-stream", "application/vnd.maxmind.maxmind-db")


def _format(request: web.Request) -> str | None:
    chosen = request.query.get("format")
    if chosen in ("csv", "mmdb"):
        return chosen
    if chosen is None:
        if request.content_type == "text/csv":
            return "csv"
        if request.content_type in MMDB_TYPES:
            return "mmdb"
    return None


async def _body(request: web.Request) -> bytes | None:
    """The request body, or None beyond UPLOAD_BYTES_MAX (read in chunks: the admin API's own
    body limit is for JSON documents, far smaller)."""
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 20):
        size += len(chunk)
        if size > UPLOAD_BYTES_MAX:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _summary(table: GeoTable, digest: str) -> dict[str, object]:
    return {"table": digest, "ipv4_prefixes": table.v4_count, "ipv6_prefixes": table.v6_count,
            "labels": len(table.labels), "bytes": len(table.arrays)}


def routes(store: Store, written: Written, tables: GeoTables) -> list[web.RouteDef]:
    async def upload(request: web.Request) -> web.Response:
        fmt = _format(request)
        if fmt is None:
            return error(415, "send a CSV as text/csv or a MaxMind DB as application/octet-stream "
                              "(or say ?format=csv|mmdb)")
        body = await _body(request)
        if body is None:
            return error(413, f"the table is larger than {UPLOAD_BYTES_MAX} bytes")
        try:
            # Half a million rows take seconds to parse: off the event loop that serves xDS.
            table = await asyncio.to_thread(imported, body, fmt)
        except TableError as exc:
            return error(422, f"the {fmt} table was refused; nothing was applied",
                         [Problem(loc=where, msg=what) for where, what in exc.problems])
        if "geo" not in (await store.current()).policy.geo:
            return error(409, "apply the Geo object 'geo' first: it names the default region and the headers")
        digest = await tables.put(table)

        def use_table(policy: Policy) -> Policy:
            geo = policy.geo.get("geo")
            if geo is None:
                raise InvalidPolicy([Problem(loc="geo", msg="the Geo object 'geo' was deleted meanwhile")])
            # An upload replaces an inline table: a Geo object holds one or the other.
            return policy.model_copy(update={"geo": {**policy.geo, "geo": geo.model_copy(
                update={"table": digest, "prefixes": []})}})

        return await commit_change(store, written, request, use_table,
                                   f"geo table {digest[:19]}: {table.prefixes} prefixes from {fmt}",
                                   **_summary(table, digest))

    async def info(_: web.Request) -> web.Response:
        current = await store.current()
        geo: Geo | None = current.policy.geo.get("geo")
        if geo is None:
            return error(404, "there is no Geo object 'geo'")
        if geo.table is None:
            table, digest = inline_table(tuple(geo.prefixes))
            source = "inline"
        else:
            digest, source = geo.table, "uploaded"
            loaded = await tables.load(digest)
            if loaded is None:
                return error(503, f"table {digest} is missing from the store")
            table = loaded
        resolved = settings(current.policy, geo)
        return web.json_response({
            "revision": current.number, "source": source, **_summary(table, digest),
            "default_region": geo.default_region,
            "label_regions": [{"country": label.country, "region": resolved.region_of(label.country, label.region),
                               "region_in_table": label.region} for label in table.labels],
        })

    return [web.post("/api/v1/geo/table", upload), web.get("/api/v1/geo/table/info", info)]
