"""How every policy change through an HTTP API becomes a revision: conditional on If-Match
when the client sends it, re-applied on top of a newer revision when it does not."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from controlplane.policy import InvalidPolicy, Policy
from controlplane.store import Conflict, Store
from controlplane.web.errors import error
from controlplane.web.principal import actor

# Told each new revision's number and when it was written (convergence is measured from then).
Written = Callable[[int, float], None]


def etag(revision: int) -> str:
    return f'"{revision}"'


def bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def expected_revision(request: web.Request) -> int | None:
    """`If-Match: "7"` makes a write conditional on revision 7 still being current."""
    raw = request.headers.get("If-Match")
    if raw is None or raw.strip() == "*":
        return None
    try:
        return int(raw.strip().strip('"'))
    except ValueError:
        raise bad_request(f"If-Match must be a revision number such as \"7\", not {raw!r}") from None


async def json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:  # not JSON, or not UTF-8
        raise bad_request(f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # the parser recurses per level: a body can nest deeper than the stack
        raise bad_request("request body nests too deeply") from None


def int_param(request: web.Request, name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise bad_request(f"{name} must be an integer, not {value!r}") from None


async def commit_change(store: Store, written: Written, request: web.Request, change: Callable[[Policy], Policy],
                        message: str, **extra: Any) -> web.Response:
    """Commit `change(current policy)` as a new revision, or answer why not."""
    expected = expected_revision(request)
    for attempt in range(50):
        current = await store.current()
        updated = change(current.policy)
        if problems := updated.problems():
            raise InvalidPolicy(problems)
        if expected is not None and expected != current.number:
            raise Conflict(expected, current.number)
        if updated == current.policy:
            return web.json_response({"revision": current.number, "changed": False, **extra},
                                     headers={"ETag": etag(current.number)})
        try:
            revision = await store.commit(updated, expected=current.number, actor=actor(request), message=message)
        except Conflict:
            if expected is not None:
                raise
            # Another write (this replica's or another's) came first: back off a little, with
            # jitter, so a burst of writers take turns instead of colliding again.
            await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            continue
        written(revision.number, time.time())
        return web.json_response({"revision": revision.number, "changed": True, **extra},
                                 headers={"ETag": etag(revision.number)})
    return error(503, "too many concurrent writes; retry")
