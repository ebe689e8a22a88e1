"""Webhooks: gates must answer 2xx to let a canary proceed; notifications are best effort."""

from __future__ import annotations

import logging

import aiohttp

log = logging.getLogger(__name__)


async def call(session: aiohttp.ClientSession, url: str, timeout_s: float, payload: dict[str, object]
               ) -> tuple[bool, str]:
    try:
        async with session.post(url, json=payload, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            return 200 <= response.status < 300, f"{url} answered {response.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return False, f"{url} failed: {exc.__class__.__name__} {exc}"
