"""ONNX Runtime sessions: which execution providers work here, and how to open a model."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from inference.config import ModelConfig

log = logging.getLogger("inference.runtime")

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PREFERENCE = (TENSORRT, CUDA, CPU)
GPU_PROVIDERS = frozenset({TENSORRT, CUDA})

# ORT's own log levels: 3 = error. Provider probing fails loudly by design; we report the result ourselves.
_ORT_ERROR = 3
_ORT_FATAL = 4


def cpu_count() -> int:
    """Cores this process may run on (the container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _probe_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def usable_providers(candidates: tuple[str, ...] = PREFERENCE) -> tuple[str, ...]:
    """The candidates, best first, that can really open a session on this machine.

    `ort.get_available_providers()` lists what the wheel was built with: the GPU wheel names
    TensorRT and CUDA even where their libraries or the GPU are missing, and ORT then falls
    back to CPU per session with a screenful of errors. Probing once with a one-node model
    keeps that noise to start-up and tells the operator what will actually run.
    """
    available = set(ort.get_available_providers())
    usable: list[str] = []
    probe = _probe_model()
    for provider in candidates:
        if provider not in available:
            continue
        if provider == CPU:
            usable.append(provider)
            continue
        options = ort.SessionOptions()
        options.log_severity_level = _ORT_FATAL
        ort.set_default_logger_severity(_ORT_FATAL)
        try:
            # ORT prints its provider fallback notice to stdout; it would interleave with our logs.
            with contextlib.redirect_stdout(io.StringIO()):
                session = ort.InferenceSession(probe, options, providers=[provider, CPU])
            if session.get_providers()[0] == provider:
                usable.append(provider)
        except Exception as error:  # noqa: BLE001 - any failure means "not usable here"
            log.debug("provider %s not usable: %s", provider, error)
        finally:
            ort.set_default_logger_severity(_ORT_ERROR)
    if CPU not in usable:
        usable.append(CPU)
    return tuple(usable)


@dataclass(frozen=True)
class RuntimeOptions:
    providers: tuple[str, ...]
    # Threads per ORT session for one operator; None = the cores divided among instances.
    intra_op_threads: int | None = None
    engine_cache_dir: Path | None = None

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] in GPU_PROVIDERS


def _shape_spec(config: ModelConfig, batch: int) -> str:
    """TensorRT profile shapes, e.g. "INPUT0:8x4", for one batch size."""
    specs = []
    for tensor in config.input:
        dims = [batch, *tensor.dims] if config.max_batch_size > 0 else list(tensor.dims)
        specs.append(f"{tensor.name}:{'x'.join(str(max(d, 1)) for d in dims)}")
    return ",".join(specs)


def _provider_list(config: ModelConfig, version: int, options: RuntimeOptions) -> list[str | tuple[str, dict[str, object]]]:
    providers: list[str | tuple[str, dict[str, object]]] = []
    for provider in options.providers:
        if provider == TENSORRT:
            trt: dict[str, object] = {}
            if options.engine_cache_dir is not None:
                # Building a TensorRT engine takes minutes for real models: keep it across restarts.
                cache = options.engine_cache_dir / config.name / str(version)
                cache.mkdir(parents=True, exist_ok=True)
                trt.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache), trt_timing_cache_enable=True)
            if config.max_batch_size > 0:
                # One profile covering every batch size the batcher can form, so no shape forces a rebuild.
                trt.update(
                    trt_profile_min_shapes=_shape_spec(config, 1),
                    trt_profile_opt_shapes=_shape_spec(config, config.max_batch_size),
                    trt_profile_max_shapes=_shape_spec(config, config.max_batch_size),
                )
            providers.append((provider, trt))
        else:
            providers.append(provider)
    return providers


class ModelSession:
    """One ORT session for one model version. `run` is thread-safe and blocking: call it
    from an executor, never on the event loop."""

    def __init__(self, path: Path, config: ModelConfig, version: int, options: RuntimeOptions) -> None:
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = options.intra_op_threads or max(1, cpu_count() // config.instance_count)
        session_options.intra_op_num_threads = threads
        session_options.inter_op_num_threads = 1
        # Spinning worker threads burn whole cores between runs; on a small shared machine
        # that starves the proxy and the event loop for a few microseconds of latency.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session_options.log_severity_level = _ORT_ERROR
        self.session = ort.InferenceSession(str(path), session_options, providers=_provider_list(config, version, options))
        self.providers = tuple(self.session.get_providers())
        self.intra_op_threads = threads
        self._check_against(config, path)

    def _check_against(self, config: ModelConfig, path: Path) -> None:
        """Fail at load time, not at the first request, when config.yaml and the graph disagree."""
        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        declared_inputs = {t.name for t in config.input}
        declared_outputs = {t.name for t in config.output}
        if graph_inputs != declared_inputs or not declared_outputs <= graph_outputs:
            raise ValueError(
                f"{path}: graph inputs {sorted(graph_inputs)} / outputs {sorted(graph_outputs)} do not match "
                f"config.yaml inputs {sorted(declared_inputs)} / outputs {sorted(declared_outputs)}"
            )

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        results = self.session.run(outputs, inputs)
        return dict(zip(outputs, results, strict=True))
