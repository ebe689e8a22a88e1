"""Every admin API error is JSON: `{"error": ..., "problems": [{"loc", "msg"}]}`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from controlplane.policy import Problem


def error(status: int, message: str, problems: list[Problem] | None = None, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"error": message, **extra}
    if problems:
        body["problems"] = [p.model_dump() for p in problems]
    return web.json_response(body, status=status)
