"""A model that fails at run time fails its requests with 500 / INTERNAL, and the answer says
which model failed without the runtime's own text (paths, node names, internals)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from backend_harness import Backend
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException


def write_brittle_model(repo: Path) -> None:
    """`brittle`: INPUT0 [-1, 4] -> OUTPUT0 [-1, 4], unchanged, unless a value exceeds 100: then it
    reshapes a row to 7 columns, which ONNX Runtime refuses at run time (warm-up inputs pass)."""
    nodes = [
        helper.make_node("ReduceMax", ["INPUT0"], ["peak"], keepdims=0),
        helper.make_node("Greater", ["peak", "hundred"], ["big"]),
        helper.make_node("Cast", ["big"], ["k"], to=TensorProto.INT64),
        helper.make_node("Mul", ["k", "three"], ["extra"]),
        helper.make_node("Add", ["four", "extra"], ["cols"]),
        helper.make_node("Unsqueeze", ["cols", "axis0"], ["cols1"]),
        helper.make_node("Concat", ["minus_one", "cols1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["INPUT0", "shape"], ["OUTPUT0"]),
    ]
    graph = helper.make_graph(
        nodes, "brittle",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
        [
            numpy_helper.from_array(np.array(100.0, np.float32), "hundred"),
            numpy_helper.from_array(np.array(3, np.int64), "three"),
            numpy_helper.from_array(np.array(4, np.int64), "four"),
            numpy_helper.from_array(np.array([0], np.int64), "axis0"),
            numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repo / "brittle" / "1").mkdir(parents=True)
    (repo / "brittle" / "1" / "model.onnx").write_bytes(model.SerializeToString())
    config = {
        "name": "brittle", "max_batch_size": 4,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
    }
    (repo / "brittle" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def test_a_failing_model_run_answers_without_the_runtime_text(start: Callable[..., Backend], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_brittle_model(repo)
    backend = start("--load", "brittle", grpc=True, repo=repo)

    def infer(values: list[float]) -> tuple[int, dict[str, object]]:
        body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": values}]}
        request = urllib.request.Request(f"{backend.url}/v2/models/brittle/infer", data=json.dumps(body).encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    assert infer([1, 2, 3, 4])[0] == 200
    status, answer = infer([1000, 2, 3, 4])
    assert status == 500
    message = str(answer["error"])
    assert "brittle" in message and "Reshape" not in message and "onnxruntime" not in message.lower(), message
    assert "Reshape" in backend.log(), "the runtime's own text is in the server log"

    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{backend.grpc_port}")
    tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array([[1000, 2, 3, 4]], np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("brittle", [tensor])
    assert caught.value.status() == "StatusCode.INTERNAL"
    assert "brittle" in caught.value.message() and "Reshape" not in caught.value.message()
    client.close()
    assert infer([1, 2, 3, 4])[0] == 200, "the server keeps serving"
