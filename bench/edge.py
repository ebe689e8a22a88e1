"""What the edge benchmarks share: real backends, a control plane holding a policy and one edge
Envoy, each stopped at the end by its pid; and callers that pace themselves to a rate."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from harness import Backend, ControlPlane, Envoy  # noqa: E402 - needs tests/ on sys.path


@contextlib.contextmanager
def replicas(workdir: Path, repository: Path, load: str, extras: Sequence[Sequence[str]]) -> Iterator[list[Backend]]:
    """One backend per entry of `extras` (its extra flags), one intra-op thread each."""
    started: list[Backend] = []
    try:
        for extra in extras:
            started.append(Backend.start(workdir, repository, load, "--intra-op-threads", "1", *extra))
        yield started
    finally:
        for backend in started:
            backend.proc.stop()


@contextlib.contextmanager
def edge(workdir: Path, documents: Sequence[dict[str, object]], node_id: str) -> Iterator[Envoy]:
    """A control plane holding `documents` and one edge Envoy that has taken them."""
    cp = ControlPlane.start(workdir)
    try:
        status, body = cp.apply(*documents)
        assert status == 200, body
        envoy = Envoy.start(workdir, cp, node_id=node_id)
        try:
            cp.wait_converged(envoy.node_id)
            yield envoy
        finally:
            envoy.proc.stop()
    finally:
        cp.proc.stop()


def routed_by_header(header: str, backends: dict[str, dict[str, object]], endpoints: list[dict[str, object]]) -> list[dict[str, object]]:
    """One Backend per entry (its spec over `endpoints`) and a route to each, chosen by `header`."""
    return [
        *({"kind": "Backend", "name": name, "spec": {"endpoints": endpoints, **spec}} for name, spec in backends.items()),
        {"kind": "Service", "name": "bench", "spec": {"routes": [
            {"name": name, "retries": None, "match": {"prefix": "/", "headers": [{"name": header, "exact": name}]},
             "split": [{"backend": name}]} for name in backends]}},
    ]


async def paced(callers: int, seconds: float, rate: float | None, send: Callable[[int], Awaitable[None]]) -> float:
    """`callers` closed loops calling `send(caller)` for `seconds`; with `rate`, each paces itself
    to rate / callers (a closed loop with think time). Returns the wall time taken."""
    interval = callers / rate if rate else 0.0
    stop_at = time.monotonic() + seconds

    async def caller(index: int) -> None:
        next_at = time.monotonic() + index * interval / callers
        while True:
            if interval:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at += interval
            if time.monotonic() >= stop_at:
                return
            await send(index)

    began = time.monotonic()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    return time.monotonic() - began
