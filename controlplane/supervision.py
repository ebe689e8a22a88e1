"""Background loops that cannot die silently: each one that raises (or returns, which a loop
must not) is logged with its traceback, counted, and started again after a backoff that
doubles up to a cap. While a loop waits to restart it is down, and /readyz says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    up: bool = False
    restarts: int = 0
    last_error: str | None = None

    def view(self) -> dict[str, object]:
        return {"up": self.up, "restarts": self.restarts, "last_error": self.last_error}


class Supervisor:
    def __init__(self, registry: CollectorRegistry, *, backoff_s: float = 0.5, max_backoff_s: float = 30.0) -> None:
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._states: dict[str, LoopState] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._restarts = Counter("sluice_loop_restarts", "Background loops restarted after they failed",
                                 ["loop"], registry=registry)
        self._up = Gauge("sluice_loop_up", "1 while a background loop runs, 0 while it waits to restart",
                         ["loop"], registry=registry)

    def start(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work()` for the life of the process, restarting it whenever it ends."""
        assert name not in self._states, name
        self._states[name] = LoopState()
        self._restarts.labels(name)  # the series exists at 0 before the first failure
        self._tasks.append(asyncio.create_task(self._keep(name, work), name=name))

    def states(self) -> dict[str, LoopState]:
        return dict(self._states)

    async def _keep(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        state = self._states[name]
        backoff = self._backoff_s
        while True:
            started = time.monotonic()
            self._set_up(name, state, True)
            try:
                await work()
                why = "it returned, which a loop must not do"
                failure: BaseException | None = None
            except Exception as exc:  # noqa: BLE001 - whatever broke the loop, it must run again
                failure = exc
                while isinstance(failure, BaseExceptionGroup) and len(failure.exceptions) == 1:
                    failure = failure.exceptions[0]  # a task group's one failure: name that one
                why = f"{failure.__class__.__name__}: {failure}"
            self._set_up(name, state, False)
            state.restarts += 1
            state.last_error = why
            self._restarts.labels(name).inc()
            # A loop that ran a good while before failing starts again from the shortest wait.
            if time.monotonic() - started > self._max_backoff_s:
                backoff = self._backoff_s
            log.error("loop %s stopped (%s); restart %d in %.1f s", name, why, state.restarts, backoff,
                      exc_info=failure)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)

    def _set_up(self, name: str, state: LoopState, up: bool) -> None:
        state.up = up
        self._up.labels(name).set(1 if up else 0)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
