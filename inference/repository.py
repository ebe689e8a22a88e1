"""The model repository on disk and the model versions loaded from it."""

from __future__ import annotations

import asyncio
import enum
import logging
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference.batching import BatchPolicy, DynamicBatcher
from inference.cache import ResponseCache
from inference.config import CONFIG_FILE, MODEL_FILE, ModelConfig, load_config
from inference.datatypes import datatype_of, numpy_dtype
from inference.errors import InvalidInput, NotFound, Unavailable
from inference.generate.config import is_generative
from inference.runtime import ModelSession, RuntimeOptions
from inference.stats import ModelStats

log = logging.getLogger("inference.repository")


class VersionState(enum.StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


def parse_version(version: str | int) -> int:
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise NotFound(f"model version must be a positive integer, got {version!r}") from None
    if number < 1:
        raise NotFound(f"model version must be a positive integer, got {version!r}")
    return number


def _batch_policy(config: ModelConfig, runtime: RuntimeOptions, default_queue_size: int) -> BatchPolicy:
    dyn = config.dynamic_batching
    queue = dyn.default_queue_policy if dyn else None
    levels = max(1, dyn.priority_levels) if dyn else 1
    pad_buckets: tuple[int, ...] = ()
    if runtime.on_gpu and config.max_batch_size > 1:
        pad_buckets = _powers_of_two_up_to(config.max_batch_size)
    return BatchPolicy(
        max_batch_size=config.max_batch_size,
        merge=dyn is not None and config.max_batch_size > 1,
        max_queue_delay_s=(dyn.max_queue_delay_microseconds if dyn else 0) / 1e6,
        preferred_batch_sizes=tuple(dyn.preferred_batch_size) if dyn else (),
        max_queue_size=(queue.max_queue_size if queue and queue.max_queue_size else default_queue_size),
        default_timeout_s=(queue.default_timeout_microseconds / 1e6 if queue and queue.default_timeout_microseconds else None),
        allow_timeout_override=queue.allow_timeout_override if queue else True,
        priority_levels=levels,
        default_priority=(dyn.default_priority_level if dyn and 1 <= dyn.default_priority_level <= levels else levels),
        instances=config.instance_count,
        pad_buckets=pad_buckets,
    )


def _powers_of_two_up_to(limit: int) -> tuple[int, ...]:
    sizes = [1]
    while sizes[-1] * 2 < limit:
        sizes.append(sizes[-1] * 2)
    return (*sizes, limit)


@dataclass
class ModelVersion:
    """One loaded version: its sessions, its batcher and its counters."""

    config: ModelConfig
    version: int
    sessions: list[ModelSession]
    batcher: DynamicBatcher
    stats: ModelStats
    executor: ThreadPoolExecutor
    state: VersionState = VersionState.LOADING
    output_names: list[str] = field(default_factory=list)
    cache: ResponseCache | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def ready(self) -> bool:
        return self.state is VersionState.READY

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        """Raise InvalidInput naming the first thing about `inputs` the model cannot take."""
        config = self.config
        expected = {t.name: t for t in config.input}
        for name in inputs:
            if name not in expected:
                raise InvalidInput(f"model {self.name!r} has no input {name!r}; its inputs are {', '.join(expected)}")
        batch_sizes = set()
        for name, tensor in expected.items():
            if name not in inputs:
                raise InvalidInput(f"model {self.name!r} needs input {name!r}, which the request does not have")
            array = inputs[name]
            if array.dtype != numpy_dtype(tensor.datatype):
                raise InvalidInput(f"input {name!r} has datatype {_datatype_name(array)}; model {self.name!r} expects {tensor.datatype}")
            want = config.full_shape(tensor)
            got = list(array.shape)
            if len(got) != len(want) or any(w != -1 and w != g for w, g in zip(want, got, strict=True)):
                raise InvalidInput(f"input {name!r} has shape {got}; model {self.name!r} expects {want} (-1 = any size)")
            if config.max_batch_size > 0:
                if not 1 <= got[0] <= config.max_batch_size:
                    raise InvalidInput(
                        f"input {name!r} has batch size {got[0]}; model {self.name!r} takes 1..{config.max_batch_size}"
                    )
                batch_sizes.add(got[0])
        if len(batch_sizes) > 1:
            raise InvalidInput(f"inputs disagree on the batch size: {sorted(batch_sizes)}")

    def check_outputs(self, names: list[str]) -> None:
        for name in names:
            if name not in self.output_names:
                raise InvalidInput(f"model {self.name!r} has no output {name!r}; its outputs are {', '.join(self.output_names)}")

    async def infer(
        self, inputs: dict[str, np.ndarray], priority: int | None = None, timeout_s: float | None = None
    ) -> dict[str, np.ndarray]:
        return await self.batcher.submit(inputs, priority, timeout_s)

    def warm_inputs(self) -> list[dict[str, np.ndarray]]:
        """One zero request per batch size the model will see, so that no first real request
        pays for kernel selection or memory arena growth."""
        sizes = sorted({1, self.config.max_batch_size, *self.batcher.policy.pad_buckets}) if self.config.max_batch_size > 0 else [0]
        requests = []
        for size in sizes:
            request = {}
            for tensor in self.config.input:
                dims = [max(d, 1) for d in tensor.dims]
                shape = [size, *dims] if size > 0 else dims
                dtype = numpy_dtype(tensor.datatype)
                request[tensor.name] = np.full(shape, b"", dtype=dtype) if dtype == np.object_ else np.zeros(shape, dtype=dtype)
            requests.append(request)
        return requests


def _datatype_name(array: np.ndarray) -> str:
    try:
        return datatype_of(array)
    except ValueError:
        return str(array.dtype)


@dataclass
class _Model:
    config: ModelConfig | None = None
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Why the last load failed, for the repository index.
    reason: str = ""


class ModelRepository:
    def __init__(self, root: Path, runtime: RuntimeOptions, default_queue_size: int = 1024, unload_drain_s: float = 5.0,
                 batch_delay_s: float = 0.0) -> None:
        self.root = root
        # A deliberate slowdown of every model run (--fault-batch-delay-ms): a slower replica.
        self.batch_delay_s = batch_delay_s
        # How long an unloaded or replaced version may take to answer what is already queued.
        self.unload_drain_s = unload_drain_s
        self.runtime = runtime
        self.default_queue_size = default_queue_size
        self._models: dict[str, _Model] = {}

    def names_on_disk(self) -> list[str]:
        if not self.root.is_dir():
            return []
        # Generative models share the repository but not this loader (see inference/generate/).
        return sorted(p.name for p in self.root.iterdir() if (p / CONFIG_FILE).is_file() and not is_generative(p))

    def versions_on_disk(self, name: str) -> list[int]:
        model_dir = self.root / name
        return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and int(p.name) > 0 and (p / MODEL_FILE).is_file())

    def _model(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            if name not in self.names_on_disk():
                raise NotFound(f"unknown model {name!r}; the repository has {', '.join(self.names_on_disk()) or 'no models'}")
            model = self._models[name] = _Model()
        return model

    async def load(self, name: str, versions: list[int] | None = None) -> list[ModelVersion]:
        """Load `versions` of `name` (None: those its version policy picks), reading config.yaml
        afresh. New versions are built and warmed before they replace old ones, so a reload
        never leaves a gap, and a failed one leaves the old versions serving."""
        model = self._model(name)
        async with model.lock:
            try:
                config = load_config(self.root / name)
                on_disk = self.versions_on_disk(name)
                wanted = config.version_policy.select(on_disk) if versions is None else sorted(set(versions))
                missing = [v for v in wanted if v not in on_disk]
                if missing:
                    raise NotFound(f"model {name!r} has no version {', '.join(map(str, missing))} on disk; it has {on_disk}")
                if not wanted:
                    raise NotFound(f"model {name!r}: its version policy selects none of the versions on disk {on_disk}")
                # A changed config applies to every version: rebuild them all.
                reload_all = model.config is not None and model.config != config
                built: list[ModelVersion] = []
                try:
                    for version in wanted:
                        if reload_all or version not in model.versions:
                            built.append(await self._build_version(config, version))
                except BaseException:
                    for mv in built:
                        mv.executor.shutdown(wait=False)
                    raise
            except Exception as error:
                model.reason = str(error)
                raise
            fresh = {mv.version: mv for mv in built}
            retired = [mv for v, mv in model.versions.items() if v not in wanted or v in fresh]
            model.config = config
            model.versions = dict(sorted(({v: mv for v, mv in model.versions.items() if v in wanted} | fresh).items()))
            model.reason = ""
            for mv in built:
                mv.batcher.start()
                mv.state = VersionState.READY
            for mv in retired:
                await self._retire(mv)
            return built

    async def _build_version(self, config: ModelConfig, version: int) -> ModelVersion:
        """Open and warm one version; it serves nothing until `load` swaps it in."""
        path = self.root / config.name / str(version) / MODEL_FILE
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=config.instance_count, thread_name_prefix=f"ort-{config.name}-v{version}")
        try:
            # One ORT session has one CUDA stream, so concurrent runs on a GPU serialize: each
            # instance gets its own session there. On CPU one session serves concurrent calls,
            # so it is lent out instance_count times over.
            count = config.instance_count if self.runtime.on_gpu else 1
            sessions = [await loop.run_in_executor(executor, ModelSession, path, config, version, self.runtime) for _ in range(count)]
            idle: queue.SimpleQueue[ModelSession] = queue.SimpleQueue()
            for i in range(config.instance_count):
                idle.put(sessions[i % count])
            stats = ModelStats(config.name, version)
            policy = _batch_policy(config, self.runtime, self.default_queue_size)
            output_names = [t.name for t in config.output]
            batch_delay_s = self.batch_delay_s

            def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                # The batcher runs at most instance_count batches at once: the queue never runs dry.
                session = idle.get()
                try:
                    if batch_delay_s > 0:
                        # Holds the instance, as a slower device would: capacity drops, not only latency.
                        time.sleep(batch_delay_s)
                    return session.run(inputs, output_names)
                finally:
                    idle.put(session)

            batcher = DynamicBatcher(policy, run, executor, stats)
            mv = ModelVersion(config, version, sessions, batcher, stats, executor, output_names=output_names)
            if config.response_cache.enable and config.deterministic:
                mv.cache = ResponseCache(config.response_cache.max_entries, config.response_cache.ttl_seconds)
            for request in mv.warm_inputs():
                # Sessions are lent in turn, so this warms every one of them.
                for _ in range(config.instance_count):
                    await loop.run_in_executor(executor, run, request)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        log.info(
            "model %s version %d ready on %s (%d intra-op threads, %d instance(s), max batch %d)",
            config.name, version, sessions[0].providers[0], sessions[0].intra_op_threads, config.instance_count, config.max_batch_size,
        )
        return mv

    async def _retire(self, mv: ModelVersion) -> None:
        mv.state = VersionState.UNLOADING
        await mv.batcher.stop(self.unload_drain_s)
        mv.executor.shutdown(wait=False)
        log.info("model %s version %d unloaded", mv.name, mv.version)

    async def unload(self, name: str) -> None:
        model = self._model(name)
        async with model.lock:
            retired, model.versions = list(model.versions.values()), {}
            for mv in retired:
                await self._retire(mv)

    async def close(self) -> None:
        for name in list(self._models):
            await self.unload(name)

    def get(self, name: str, version: str | int | None = None) -> ModelVersion:
        """The loaded version asked for, or the latest loaded one when `version` is None."""
        model = self._model(name)
        if version is None:
            if not model.versions:
                raise Unavailable(f"model {name!r} is not loaded")
            mv = model.versions[max(model.versions)]
        else:
            number = parse_version(version)
            if number not in model.versions:
                loaded = sorted(model.versions)
                raise NotFound(f"model {name!r} has no version {number} loaded; loaded versions: {loaded or 'none'}")
            mv = model.versions[number]
        if not mv.ready:
            raise Unavailable(f"model {name!r} version {mv.version} is {mv.state.value.lower()}")
        return mv

    def config(self, name: str) -> ModelConfig:
        model = self._model(name)
        return model.config if model.config is not None else load_config(self.root / name)

    def loaded(self, name: str | None = None) -> list[ModelVersion]:
        models = [self._model(name)] if name is not None else list(self._models.values())
        return [mv for model in models for _, mv in sorted(model.versions.items())]

    def all_ready(self) -> bool:
        return all(mv.ready for mv in self.loaded())

    def index(self) -> list[dict[str, str]]:
        """Triton's repository index: every model on disk, with the state of each version."""
        entries: list[dict[str, str]] = []
        for name in self.names_on_disk():
            model = self._models.get(name)
            if model is None or not model.versions:
                entry = {"name": name, "state": "UNAVAILABLE"}
                if model is not None and model.reason:
                    entry["reason"] = model.reason
                entries.append(entry)
                continue
            for version, mv in sorted(model.versions.items()):
                entry = {"name": name, "version": str(version), "state": mv.state.value}
                if model.reason:
                    # A failed reload leaves the previous versions serving; say why they were not replaced.
                    entry["reason"] = model.reason
                entries.append(entry)
        return entries
