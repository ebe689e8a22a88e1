"""One ONNX Runtime session of a causal LM with past, on CPU or on CUDA with IO binding.

On CUDA, `present.*` outputs are bound to the device and handed back as the next step's
`past_key_values.*` inputs, so a batch whose membership does not change keeps its KV cache
on the GPU between steps; only the logits come back to the host every step. The engine
reads a present to the host (`host`) only when the batch changes. Only the CPU path has run
here (no GPU on this machine); see inference/README.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class CausalLM:
    def __init__(self, path: Path, providers: tuple[str, ...], threads: int, num_layers: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # TensorRT needs a build per input shape, and a decoder's shapes change every step.
        chosen = [p for p in providers if p in (CUDA, CPU)] or [CPU]
        self.session = ort.InferenceSession(str(path), options, providers=chosen)
        self.provider = self.session.get_providers()[0]
        self.on_gpu = self.provider == CUDA
        self.present_names = [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
        self.past_names = [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
        names = {i.name for i in self.session.get_inputs()}
        missing = {"input_ids", "attention_mask", *self.past_names} - names
        if missing:
            raise ValueError(f"{path}: not a text-generation-with-past export; missing inputs {sorted(missing)}")
        self._has_position_ids = "position_ids" in names
        self.run: Callable[[dict[str, Any]], tuple[np.ndarray, list[Any]]] = self._run_cuda if self.on_gpu else self._run_cpu

    def _inputs(self, feeds: dict[str, Any]) -> dict[str, Any]:
        return feeds if self._has_position_ids else {k: v for k, v in feeds.items() if k != "position_ids"}

    def _run_cpu(self, feeds: dict[str, Any]) -> tuple[np.ndarray, list[Any]]:
        outputs = self.session.run(["logits", *self.present_names], self._inputs(feeds))
        return outputs[0], outputs[1:]

    def _run_cuda(self, feeds: dict[str, Any]) -> tuple[np.ndarray, list[Any]]:
        binding = self.session.io_binding()
        for name, value in self._inputs(feeds).items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        binding.bind_output("logits", "cpu")
        for name in self.present_names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy(), list(outputs[1:])

    @staticmethod
    def host(present: Any) -> np.ndarray:
        return np.asarray(present.numpy() if isinstance(present, ort.OrtValue) else present)
