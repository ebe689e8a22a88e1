"""What /readyz checks, beside /healthz (which says only that the process answers): the store
answers, the publisher has pushed the newest revision (or is still within its grace), and every
background loop runs. A replica that fails one leaves the Service; its liveness is untouched.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from controlplane.store import Store, StoreUnavailable
from controlplane.supervision import Supervisor

STORE_TIMEOUT_S = 2.0


class Publishing(Protocol):
    def caught_up(self, current: int) -> bool: ...


class Readiness:
    def __init__(self, store: Store, publisher: Publishing, supervisor: Supervisor) -> None:
        self._store = store
        self._publisher = publisher
        self._supervisor = supervisor

    async def check(self) -> tuple[bool, dict[str, Any]]:
        """(ready, each check by name with `ok` and, when not ok, why)."""
        checks: dict[str, dict[str, Any]] = {}
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                await self._store.ping()
            checks["store"] = {"ok": True}
        except (StoreUnavailable, TimeoutError) as exc:
            checks["store"] = {"ok": False, "why": str(exc) or f"no answer in {STORE_TIMEOUT_S:.0f} s"}
        current = (await self._store.current()).number
        caught_up = self._publisher.caught_up(current)
        checks["publisher"] = {"ok": caught_up} if caught_up else {
            "ok": False, "why": f"revision {current} is not pushed yet"}
        for name, state in sorted(self._supervisor.states().items()):
            checks[f"loop {name}"] = {"ok": True} if state.up else {
                "ok": False, "why": f"restarting after: {state.last_error}", "restarts": state.restarts}
        return all(c["ok"] for c in checks.values()), checks
