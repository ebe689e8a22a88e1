"""The comparator's HTTP side: Envoy mirrors a share of a route's requests here (fire and
forget: users never wait on a mirror); each one is sent to the stable and the candidate
backends at once and their answers compared.

Users' latency is untouched, and the stable version's extra load is exactly the mirrored
share. Memory and work are bounded: at most `max_inflight` comparisons at a time and
request bodies up to `max_body_bytes`; anything beyond is dropped, answered 503 (Envoy
ignores a mirror's answer) and counted, as are answers larger than `max_body_bytes`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from controlplane.policy.model import RouteMatch
from controlplane.shadow.compare import BINARY_HEADER, Comparison, Incomparable, compare, for_comparison

log = logging.getLogger(__name__)

# Headers a backend may need to answer as it would the user (content, auth, the model's own).
_FORWARDED = re.compile(r"^(content-type|authorization|inference-header-content-length|x-(?!envoy-|forwarded-).*)$",
                        re.IGNORECASE)


Answer = tuple[bytes, str | None]  # the body, and the binary-tensor header length if any


class _TooLarge(Exception):
    """An answer longer than the comparator holds (max_body_bytes)."""


@dataclass(frozen=True)
class Target:
    """One shadowing canary: which mirrored requests are its, and where each version answers."""

    match: RouteMatch
    stable: tuple[str, ...]  # host:port of each endpoint
    candidate: tuple[str, ...]

    def matches(self, path: str) -> bool:
        path = path.split("?", 1)[0]
        if self.match.prefix is not None:
            return path.startswith(self.match.prefix)
        if self.match.path is not None:
            return path == self.match.path
        return self.match.regex is not None and re.fullmatch(self.match.regex, path) is not None


@dataclass
class Tally:
    """Comparisons since the window opened."""

    compared: int = 0  # both versions answered 2xx
    candidate_errors: int = 0  # stable answered, the candidate did not
    stable_errors: int = 0  # says nothing of the candidate: not judged
    incomparable: int = 0  # both answered, in shapes or formats that cannot be compared
    dropped: int = 0  # not compared: the comparator was full or the body too large
    comparison: Comparison = field(default_factory=Comparison)

    def add(self, c: Comparison) -> None:
        t = self.comparison
        t.rows += c.rows
        t.argmax_rows += c.argmax_rows
        t.agreed_rows += c.agreed_rows
        t.max_abs_diff = max(t.max_abs_diff, c.max_abs_diff)
        t.min_cosine = min(t.min_cosine, c.min_cosine)
        t.cosine_sum += c.cosine_sum
        t.generations += c.generations
        t.exact += c.exact
        t.prefix_tokens += c.prefix_tokens

    @property
    def agreement(self) -> float | None:
        """Rows with the same argmax and generations that match exactly, over all compared
        (an incomparable answer counts as a disagreement)."""
        t = self.comparison
        total = t.argmax_rows + t.generations + self.incomparable
        return None if total == 0 else (t.agreed_rows + t.exact) / total

    @property
    def error_rate(self) -> float | None:
        attempts = self.compared + self.candidate_errors + self.incomparable
        return None if attempts == 0 else self.candidate_errors / attempts

    def figures(self) -> dict[str, Any]:
        t = self.comparison
        return {
            **{k: v for k, v in asdict(self).items() if k != "comparison"},
            "agreement": self.agreement, "error_rate": self.error_rate,
            "rows": t.rows, "max_abs_diff": t.max_abs_diff if t.rows else None,
            "mean_cosine": t.cosine_sum / t.rows if t.rows else None, "min_cosine": t.min_cosine if t.rows else None,
            "generations": t.generations, "exact_match_rate": t.exact / t.generations if t.generations else None,
            "mean_prefix_tokens": t.prefix_tokens / t.generations if t.generations else None,
        }


class Comparator:
    def __init__(self, *, max_inflight: int = 64, max_body_bytes: int = 4 << 20, timeout_s: float = 30.0) -> None:
        self._max_inflight = max_inflight
        self._max_body_bytes = max_body_bytes
        self._timeout_s = timeout_s
        self._targets: dict[str, Target] = {}
        self._tallies: dict[str, Tally] = {}
        self._turn = itertools.count()
        self._inflight = 0
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None  # where it listens, once started

    def set_targets(self, targets: dict[str, Target]) -> None:
        """The canaries now in their shadow stage; tallies of the others are dropped."""
        self._targets = dict(targets)
        self._tallies = {name: self._tallies.get(name, Tally()) for name in targets}

    def take(self, name: str) -> Tally:
        """The tally since the last take; a new one starts."""
        tally = self._tallies.get(name, Tally())
        if name in self._targets:
            self._tallies[name] = Tally()
        return tally

    def peek(self, name: str) -> Tally | None:
        return self._tallies.get(name)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._mirrored)
        return app

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            connector=aiohttp.TCPConnector(limit=2 * self._max_inflight))
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        bound = server.sockets[0].getsockname()
        self.address = (host, int(bound[1]))
        return self.address

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _target(self, path: str) -> tuple[str, Target] | None:
        return next(((n, t) for n, t in sorted(self._targets.items()) if t.matches(path)), None)

    async def _mirrored(self, request: web.Request) -> web.Response:
        found = self._target(request.path_qs)
        if found is None:
            return web.Response(status=404, text="no canary is shadowing this path")
        name, target = found
        tally = self._tallies[name]
        if self._inflight >= self._max_inflight or (request.content_length or 0) > self._max_body_bytes:
            tally.dropped += 1
            return web.Response(status=503, text="comparator full: request dropped")
        self._inflight += 1
        try:
            body = for_comparison(await request.read())
            headers = {k: v for k, v in request.headers.items() if _FORWARDED.match(k)}
            turn = next(self._turn)
            stable, candidate = await self._both(request.method, target, turn, request.path_qs, headers, body)
        except (web.HTTPRequestEntityTooLarge, _TooLarge):
            self._tallies.get(name, Tally()).dropped += 1
            return web.Response(status=503, text="request or answer too large to compare: dropped")
        finally:
            self._inflight -= 1
        tally = self._tallies.get(name, Tally())  # the window may have turned meanwhile
        if stable is None:
            tally.stable_errors += 1
        elif candidate is None:
            tally.candidate_errors += 1
        else:
            try:
                tally.add(compare(stable, candidate))
                tally.compared += 1
            except (Incomparable, ValueError, KeyError, TypeError) as exc:
                log.debug("canary %s: answers not comparable: %s", name, exc)
                tally.incomparable += 1
        return web.Response(status=204)

    async def _both(self, method: str, target: Target, turn: int, path: str, headers: dict[str, str], body: bytes
                    ) -> tuple[Answer | None, Answer | None]:
        """Both versions' answers; each runs to its end even when the other fails."""
        stable, candidate = await asyncio.gather(self._send(method, target.stable, turn, path, headers, body),
                                                 self._send(method, target.candidate, turn, path, headers, body),
                                                 return_exceptions=True)
        if isinstance(stable, BaseException):
            raise stable
        if isinstance(candidate, BaseException):
            raise candidate
        return stable, candidate

    async def _send(self, method: str, endpoints: tuple[str, ...], turn: int, path: str, headers: dict[str, str],
                    body: bytes) -> Answer | None:
        """The answer (body, binary-tensor header length), or None when it failed."""
        assert self._session is not None
        endpoint = endpoints[turn % len(endpoints)]
        try:
            async with self._session.request(method, f"http://{endpoint}{path}", data=body, headers=headers) as r:
                if not 200 <= r.status < 300:
                    return None
                answer = bytearray()
                async for chunk in r.content.iter_chunked(64 << 10):
                    answer += chunk
                    if len(answer) > self._max_body_bytes:
                        raise _TooLarge
                return bytes(answer), r.headers.get(BINARY_HEADER)
        except (aiohttp.ClientError, TimeoutError):
            return None
