"""Generate the demo model repository: `python -m inference.gen_models --out DIR [--resnet]`.

Layout, as in Triton: DIR/<model>/config.yaml and DIR/<model>/<version>/model.onnx.
Everything is built with the `onnx` package from seeded numbers, so the output is the
same on every machine and nothing is downloaded. Files whose content is already right
are left untouched (and their mtime with them), which keeps `make models` a no-op.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inference import demo
from inference.config import (
    CONFIG_FILE,
    MODEL_FILE,
    DynamicBatching,
    LatestPolicy,
    ModelConfig,
    QueuePolicy,
    TensorConfig,
    VersionPolicy,
)
from inference.generate.checkpoint import CANDIDATE_TOKEN, FAMILIES, SMALL, TINY, Family, build_files
from inference.generate.config import GenerateConfig

log = logging.getLogger("inference.gen_models")

# Opset 17 / IR 8: old enough for every ORT execution provider we pick (TensorRT included).
OPSET = 17
IR_VERSION = 8


def _finish(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sluice")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def classifier_onnx(version: int) -> bytes:
    weights, bias = demo.classifier_weights(version)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", ["INPUT0", "W"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["OUTPUT0"], axis=-1),
        ],
        name=f"classifier_v{version}",
        inputs=[helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", demo.CLASSIFIER_FEATURES])],
        outputs=[helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", demo.CLASSIFIER_CLASSES])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")],
    )
    return _finish(graph)


def classifier_config() -> ModelConfig:
    return ModelConfig(
        name=demo.CLASSIFIER,
        max_batch_size=8,
        input=[TensorConfig(name="INPUT0", data_type="TYPE_FP32", dims=[demo.CLASSIFIER_FEATURES])],
        output=[TensorConfig(name="OUTPUT0", data_type="TYPE_FP32", dims=[demo.CLASSIFIER_CLASSES])],
        # Both versions by default so one process can show version routing; the local mesh
        # runs one process per version with --load classifier:1 / classifier:2.
        version_policy=VersionPolicy(all={}),
        dynamic_batching=DynamicBatching(
            # A run costs microseconds here, less than any wait could win (and the event loop's
            # timers round up to 1 ms): batches form from requests queued behind a busy run.
            max_queue_delay_microseconds=0,
            preferred_batch_size=[4, 8],
            priority_levels=2,
            default_priority_level=2,
            default_queue_policy=QueuePolicy(max_queue_size=128),
        ),
    )


@dataclass
class _GraphBuilder:
    """Accumulates nodes and seeded random initializers for a convolutional network."""

    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    counter: int = 0

    def _name(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}{self.counter}"

    def _param(self, kind: str, array: np.ndarray) -> str:
        name = self._name(kind)
        self.initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv(self, x: str, c_in: int, c_out: int, kernel: int, stride: int = 1, relu: bool = True) -> str:
        # He initialisation keeps activations finite through 50 layers of random weights;
        # batch norm is folded into the conv bias, as exporters do for inference.
        std = np.sqrt(2.0 / (c_in * kernel * kernel))
        w = self._param("w", self.rng.standard_normal((c_out, c_in, kernel, kernel), dtype=np.float32) * std)
        b = self._param("b", np.zeros(c_out, dtype=np.float32))
        out = self._name("conv")
        pad = kernel // 2
        self.nodes.append(
            helper.make_node("Conv", [x, w, b], [out], kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4)
        )
        return self.relu(out) if relu else out

    def relu(self, x: str) -> str:
        out = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [out]))
        return out

    def bottleneck(self, x: str, c_in: int, width: int, stride: int) -> str:
        c_out = width * 4
        y = self.conv(x, c_in, width, 1)
        y = self.conv(y, width, width, 3, stride)
        y = self.conv(y, width, c_out, 1, relu=False)
        shortcut = x if (stride == 1 and c_in == c_out) else self.conv(x, c_in, c_out, 1, stride, relu=False)
        out = self._name("add")
        self.nodes.append(helper.make_node("Add", [y, shortcut], [out]))
        return self.relu(out)


def resnet50_onnx(seed: int = 50) -> bytes:
    """ResNet-50 v1.5 topology (25.5 M parameters) with seeded random weights: the compute
    profile of a real vision model for benchmarks, without a download."""
    g = _GraphBuilder(rng=np.random.default_rng(seed))
    x = g.conv("INPUT0", 3, 64, 7, stride=2)
    pooled = g._name("pool")
    g.nodes.append(helper.make_node("MaxPool", [x], [pooled], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, c_in = pooled, 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            x = g.bottleneck(x, c_in, width, stride if i == 0 else 1)
            c_in = width * 4
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    g.nodes.append(helper.make_node("Flatten", ["gap"], ["features"], axis=1))
    fc_w = g._param("fc_w", g.rng.standard_normal((c_in, demo.RESNET50_CLASSES), dtype=np.float32) * np.sqrt(1.0 / c_in))
    fc_b = g._param("fc_b", np.zeros(demo.RESNET50_CLASSES, dtype=np.float32))
    g.nodes.append(helper.make_node("Gemm", ["features", fc_w, fc_b], ["logits"]))
    g.nodes.append(helper.make_node("Softmax", ["logits"], ["OUTPUT0"], axis=-1))
    graph = helper.make_graph(
        nodes=g.nodes,
        name="resnet50",
        inputs=[helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", *demo.RESNET50_INPUT_SHAPE])],
        outputs=[helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", demo.RESNET50_CLASSES])],
        initializer=g.initializers,
    )
    return _finish(graph)


def resnet50_config() -> ModelConfig:
    return ModelConfig(
        name=demo.RESNET50,
        max_batch_size=32,
        input=[TensorConfig(name="INPUT0", data_type="TYPE_FP32", dims=list(demo.RESNET50_INPUT_SHAPE))],
        output=[TensorConfig(name="OUTPUT0", data_type="TYPE_FP32", dims=[demo.RESNET50_CLASSES])],
        version_policy=VersionPolicy(latest=LatestPolicy(num_versions=1)),
        dynamic_batching=DynamicBatching(
            max_queue_delay_microseconds=2000,
            preferred_batch_size=[8, 16, 32],
            default_queue_policy=QueuePolicy(max_queue_size=512),
        ),
    )


def _write_if_changed(path: Path, content: bytes) -> bool:
    """Write atomically unless the file already holds `content`; True when written."""
    if path.is_file() and path.stat().st_size == len(content) and path.read_bytes() == content:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(content)
    tmp.replace(path)
    return True


def generative_config(family: Family) -> GenerateConfig:
    if family is TINY:
        return GenerateConfig(name=family.name, max_model_len=1024, kv_cache_mb=32, prefill_chunk_tokens=256)
    return GenerateConfig(name=family.name, max_model_len=4096, kv_cache_mb=512, prefill_chunk_tokens=256)


def generate_llm(out: Path, family: Family, candidate: bool = False) -> list[Path]:
    """A generative model: config.yaml, and version 1 as Hugging Face files plus model.onnx."""
    model_dir = out / family.name
    files = {model_dir / CONFIG_FILE: generative_config(family).to_yaml().encode()}
    files.update({model_dir / "1" / name: content for name, content in build_files(family, candidate).items()})
    return [path for path, content in files.items() if _write_if_changed(path, content)]


def generate(out: Path, resnet: bool = False, llms: tuple[str, ...] = (TINY.name,),
             candidates: bool = False, llm_candidate: bool = False) -> list[Path]:
    """Build the repository under `out`; returns the files that were (re)written."""
    classifiers = (*demo.CLASSIFIER_VERSIONS, *(demo.CLASSIFIER_CANDIDATES if candidates else ()))
    models: list[tuple[ModelConfig, dict[int, bytes]]] = [
        (classifier_config(), {v: classifier_onnx(v) for v in classifiers}),
    ]
    if resnet:
        models.append((resnet50_config(), {1: resnet50_onnx()}))
    written: list[Path] = []
    for config, versions in models:
        model_dir = out / config.name
        files = {model_dir / CONFIG_FILE: config.to_yaml().encode()}
        files.update({model_dir / str(v) / MODEL_FILE: onnx_bytes for v, onnx_bytes in versions.items()})
        written.extend(path for path, content in files.items() if _write_if_changed(path, content))
    for name in llms:
        written.extend(generate_llm(out, FAMILIES[name], llm_candidate))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inference.gen_models",
        description="Generate the deterministic demo model repository (Triton layout, config.yaml per model).",
    )
    parser.add_argument("--out", type=Path, required=True, help="repository directory to create or update")
    parser.add_argument(
        "--resnet", action="store_true", help="also generate resnet50 (ResNet-50 shape, seeded random weights, ~100 MB) for benchmarks"
    )
    parser.add_argument(
        "--small-llm",
        action="store_true",
        help=f"also generate {SMALL.name} (Llama architecture, {SMALL.spec.num_layers} layers, width {SMALL.spec.hidden_size}, ~180 MB) "
        "for benchmarks",
    )
    parser.add_argument(
        "--canary-candidates",
        action="store_true",
        help="also generate classifier candidate versions for canaries: "
        + ", ".join(f"{v} (version 1 with {flip:.0%} of argmax predictions flipped)"
                    for v, flip in demo.CLASSIFIER_CANDIDATES.items()),
    )
    parser.add_argument(
        "--llm-candidate",
        action="store_true",
        help=f"write the generative models as canary candidates: the input embedding of {CANDIDATE_TOKEN!r} redrawn, "
        "so greedy outputs change for prompts containing it (use a repository of its own: a generative model "
        "serves its highest version)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    llms = (TINY.name, SMALL.name) if args.small_llm else (TINY.name,)
    written = generate(args.out, resnet=args.resnet, llms=llms, candidates=args.canary_candidates,
                       llm_candidate=args.llm_candidate)
    for path in written:
        log.info("wrote %s", path)
    log.info("model repository %s: %d file(s) written, the rest already up to date", args.out, len(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
