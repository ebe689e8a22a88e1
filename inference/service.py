"""The transport-neutral inference core that the HTTP and gRPC servers both call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

from inference.cache import cache_key
from inference.errors import DeadlineExceeded, InferenceError, InternalError, InvalidInput, NotFound, Throttled, Unavailable
from inference.generate.registry import GenerativeModels
from inference.load import LoadMeter, LoadReport
from inference.protocol import InferRequest, InferResponse
from inference.repository import ModelRepository, ModelVersion

log = logging.getLogger("inference.service")

SERVER_NAME = "sluice-backend"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("binary_tensor_data", "model_repository", "statistics", "schedule_policy")


@dataclass(frozen=True)
class Faults:
    """Deliberate misbehaviour, for exercising retries and timeouts in the traffic layer."""

    error_rate: float = 0.0
    delay_s: float = 0.0
    throttle_s: int = 0  # answer every infer request 429 with this Retry-After

    @property
    def active(self) -> bool:
        return self.error_rate > 0 or self.delay_s > 0 or self.throttle_s > 0


class InFlight:
    """Counts requests being served, so shutdown can wait for them to finish, and meters them
    for the load report."""

    def __init__(self) -> None:
        self.count = 0
        self.meter = LoadMeter()
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        self.count += 1
        self.meter.started()
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            self.meter.finished()
            if self.count == 0:
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False


class InferenceService:
    def __init__(
        self, repository: ModelRepository, faults: Faults = Faults(), seed: int | None = None, generative: GenerativeModels | None = None
    ) -> None:
        self.repository = repository
        self.generative = generative
        self.faults = faults
        self.in_flight = InFlight()
        self.draining = False
        # False until the start-up models are loaded and warmed: until then some are not yet listed.
        self.started = False
        self._random = random.Random(seed)

    def ready(self) -> bool:
        """Ready once the start-up models are warmed, while some version serves and none is
        half-loaded, and not draining."""
        serving = bool(self.repository.loaded()) or bool(self.generative and self.generative.loaded())
        return self.started and not self.draining and serving and self.repository.all_ready()

    def load(self) -> LoadReport:
        """This server's load now; capacity is what its loaded versions run at once."""
        loaded = self.repository.loaded()
        waiting = sum(mv.stats.queue_depth for mv in loaded)
        capacity = sum(mv.config.instance_count * max(1, mv.config.max_batch_size) for mv in loaded)
        return self.in_flight.meter.report(waiting, max(1, capacity))

    def start_draining(self) -> None:
        self.draining = True

    def server_metadata(self) -> dict[str, object]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, object]:
        if version is not None:
            versions = [self.repository.get(name, version)]
        else:
            versions = self.repository.loaded(name)
            if not versions:
                raise Unavailable(f"model {name!r} is not loaded")
        config = versions[-1].config
        return {
            "name": name,
            "versions": [str(mv.version) for mv in versions],
            "platform": config.platform,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": config.full_shape(t)} for t in config.input],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": config.full_shape(t)} for t in config.output],
        }

    def model_config(self, name: str, version: str | None = None) -> dict[str, object]:
        if version is not None:
            return self.repository.get(name, version).config.to_json()
        return self.repository.config(name).to_json()

    def model_stats(self, name: str | None = None, version: str | None = None) -> list[dict[str, object]]:
        """Triton's statistics for the loaded versions asked for (all of them when no name)."""
        versions = [self.repository.get(name, version)] if name is not None and version is not None else self.repository.loaded(name)
        return [mv.stats.to_json() for mv in versions]

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        entries = self.repository.index()
        return [e for e in entries if e["state"] == "READY"] if ready_only else entries

    async def load_model(self, name: str) -> None:
        if self.draining:
            raise Unavailable("server is shutting down")
        try:
            await self.repository.load(name)
        except (NotFound, Unavailable):
            raise
        except Exception as error:  # noqa: BLE001 - a bad config or graph is the caller's problem to fix
            raise InvalidInput(f"failed to load model {name!r}: {error}") from error

    async def unload_model(self, name: str) -> None:
        await self.repository.unload(name)

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self.repository.get(name, version)
        except Unavailable:
            return False
        return not self.draining

    def resolve(self, name: str, version: str | None) -> ModelVersion:
        """The version that will serve a request; transports call it before decoding the body
        so that an unknown model is a 404 whatever the body holds."""
        if self.draining:
            raise Unavailable("server is shutting down")
        return self.repository.get(name, version)

    async def infer(self, name: str, version: str | None, request: InferRequest) -> InferResponse:
        mv = self.resolve(name, version)
        with self.in_flight.track():
            started = time.perf_counter_ns()
            try:
                response = await self._infer(mv, request)
            except (InferenceError, asyncio.CancelledError) as error:
                mv.stats.record_failure(_failure_reason(error), time.perf_counter_ns() - started)
                raise
            mv.stats.record_success(time.perf_counter_ns() - started)
            return response

    async def _infer(self, mv: ModelVersion, request: InferRequest) -> InferResponse:
        mv.check_inputs(request.inputs)
        wanted = request.outputs if request.outputs is not None else mv.output_names
        if len(set(wanted)) != len(wanted):
            raise InvalidInput(f"outputs {wanted} name an output more than once")
        mv.check_outputs(wanted)
        if self.faults.throttle_s > 0:
            raise Throttled("injected fault (--fault-throttle-s): too many requests", self.faults.throttle_s)
        if self.faults.delay_s > 0:
            await asyncio.sleep(self.faults.delay_s)
        if self.faults.error_rate > 0 and self._random.random() < self.faults.error_rate:
            raise InternalError("injected fault (--fault-error-rate)")
        cached = False
        if mv.cache is None:
            outputs = await mv.infer(request.inputs, request.priority, request.timeout_s)
        else:
            lookup_started = time.perf_counter_ns()
            key = cache_key(mv.name, mv.version, request.inputs)
            hit = mv.cache.get(key)
            if hit is not None:
                mv.stats.cache_hit.add(time.perf_counter_ns() - lookup_started)
                outputs, cached = hit, True
            else:
                lookup_ns = time.perf_counter_ns() - lookup_started
                outputs = await mv.infer(request.inputs, request.priority, request.timeout_s)
                insert_started = time.perf_counter_ns()
                mv.cache.put(key, outputs)
                mv.stats.cache_miss.add(lookup_ns + time.perf_counter_ns() - insert_started)
        return InferResponse(mv.name, mv.version, {name: outputs[name] for name in wanted}, id=request.id, cached=cached)


def _failure_reason(error: BaseException) -> str:
    """Triton's failure reasons: refused before running, given up on, failed in the model, or bad input."""
    if isinstance(error, Unavailable):
        return "REJECTED"
    if isinstance(error, (DeadlineExceeded, asyncio.CancelledError)):
        return "CANCELED"
    if isinstance(error, InternalError):
        return "BACKEND"
    return "OTHER"
