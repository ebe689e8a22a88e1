"""Open Inference Protocol (KServe v2) requests and responses, and their HTTP/REST encoding.

`InferRequest` / `InferResponse` are what the core sees, whatever the transport. The HTTP
body is JSON, optionally followed by raw tensor bytes (Triton's binary tensor data
extension): the `Inference-Header-Content-Length` header then says where the JSON ends.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference.datatypes import datatype_of, deserialize_bytes_tensor, numpy_dtype, serialize_bytes_tensor
from inference.errors import InvalidInput

HEADER_CONTENT_LENGTH = "Inference-Header-Content-Length"
# Response headers (gRPC: initial metadata) naming what served a request, for proxies and clients.
MODEL_NAME_HEADER = "x-model-name"
MODEL_VERSION_HEADER = "x-model-version"
CACHE_HEADER = "x-inference-cache"  # "hit" when the answer came from the response cache


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    # Names of the outputs wanted, in order; None = every output of the model.
    outputs: list[str] | None = None
    id: str | None = None
    priority: int | None = None
    timeout_s: float | None = None
    # Outputs to send as binary tensor data (HTTP only); `binary_default` covers the rest.
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False


@dataclass
class InferResponse:
    model_name: str
    model_version: int
    outputs: dict[str, np.ndarray]
    id: str | None = None
    cached: bool = False


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _parameters(holder: dict[str, Any], what: str) -> dict[str, Any]:
    return _object(holder.get("parameters") or {}, f"{what} 'parameters'")


def check_datatype(datatype: Any, what: str) -> str:
    if not isinstance(datatype, str) or not datatype:
        raise InvalidInput(f"{what} needs a 'datatype'")
    try:
        numpy_dtype(datatype)
    except ValueError as error:
        raise InvalidInput(f"{what}: {error}") from None
    return datatype


def check_shape(raw: Any, what: str) -> list[int]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise InvalidInput(f"{what} 'shape' must be a list of non-negative integers, got {raw!r}")
    return raw


def _decode_json_data(data: Any, datatype: str, shape: list[int], what: str) -> np.ndarray:
    dtype = numpy_dtype(datatype)
    count = math.prod(shape)
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=np.object_).reshape(-1)
            array = np.empty(flat.size, dtype=np.object_)
            array[:] = [item.encode() if isinstance(item, str) else bytes(item) for item in flat]
        else:
            array = np.asarray(data, dtype=dtype).reshape(-1)
    except (TypeError, ValueError, OverflowError) as error:
        raise InvalidInput(f"{what} 'data' cannot be read as {datatype}: {error}") from None
    if array.size != count:
        raise InvalidInput(f"{what} has {array.size} data elements but shape {shape} needs {count}")
    return array.reshape(shape)


def decode_raw_tensor(raw: bytes | memoryview, datatype: str, shape: list[int], what: str) -> np.ndarray:
    """A tensor from its raw little-endian bytes (HTTP binary extension, gRPC raw contents)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        try:
            return deserialize_bytes_tensor(raw, count).reshape(shape)
        except ValueError as error:
            raise InvalidInput(f"{what}: {error}") from None
    dtype = numpy_dtype(datatype)
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(f"{what} has {len(raw)} bytes of raw data but shape {shape} of {datatype} needs {count * dtype.itemsize}")
    # Copy out of the request buffer: the array outlives it, and ORT wants aligned memory.
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def decode_http_request(body: bytes, header_length: int | None) -> InferRequest:
    """Parse an infer request body; `header_length` is the binary extension's JSON length."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise InvalidInput(f"{HEADER_CONTENT_LENGTH} is {header_length} but the body has {len(body)} bytes")
    json_part = body if header_length is None else body[:header_length]
    binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    try:
        doc = _object(json.loads(json_part), "request body")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidInput(f"request body is not valid JSON: {error}") from None

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("request needs a non-empty 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, raw in enumerate(raw_inputs):
        tensor = _object(raw, f"inputs[{i}]")
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{i}] needs a 'name'")
        what = f"input {name!r}"
        if name in inputs:
            raise InvalidInput(f"{what} appears twice")
        datatype = check_datatype(tensor.get("datatype"), what)
        shape = check_shape(tensor.get("shape"), what)
        params = _parameters(tensor, what)
        if "shared_memory_region" in params:
            raise InvalidInput(f"{what}: shared memory is not supported by this server")
        if "binary_data_size" in params:
            size = params["binary_data_size"]
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInput(f"{what}: binary_data_size {size!r} runs past the {len(binary)} bytes of binary data")
            inputs[name] = decode_raw_tensor(binary[offset : offset + size], datatype, shape, what)
            offset += size
        elif "data" in tensor:
            inputs[name] = _decode_json_data(tensor["data"], datatype, shape, what)
        else:
            raise InvalidInput(f"{what} has neither 'data' nor a 'binary_data_size' parameter")
    if offset != len(binary):
        raise InvalidInput(f"request has {len(binary) - offset} bytes of binary data that no input claims")

    params = _parameters(doc, "request")
    request = InferRequest(inputs=inputs, binary_default=bool(params.get("binary_data_output", False)))
    request_id = doc.get("id")
    if request_id is not None:
        request.id = str(request_id)
    priority = params.get("priority")
    if priority is not None:
        if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
            raise InvalidInput(f"parameter 'priority' must be a non-negative integer, got {priority!r}")
        request.priority = priority
    timeout = params.get("timeout")
    if timeout is not None:
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
            raise InvalidInput(f"parameter 'timeout' must be a non-negative integer (microseconds), got {timeout!r}")
        request.timeout_s = timeout / 1e6 if timeout else None

    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidInput("'outputs' must be a list")
        request.outputs = []
        for i, raw in enumerate(raw_outputs):
            out = _object(raw, f"outputs[{i}]")
            name = out.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidInput(f"outputs[{i}] needs a 'name'")
            out_params = _parameters(out, f"output {name!r}")
            if "classification" in out_params:
                raise InvalidInput(f"output {name!r}: the classification extension is not supported by this server")
            if "shared_memory_region" in out_params:
                raise InvalidInput(f"output {name!r}: shared memory is not supported by this server")
            request.outputs.append(name)
            if "binary_data" in out_params:
                request.binary_outputs[name] = bool(out_params["binary_data"])
    return request


def _json_data(array: np.ndarray) -> list[Any]:
    flat = array.reshape(-1)
    if flat.dtype == np.object_:
        return [item.decode(errors="replace") if isinstance(item, bytes) else str(item) for item in flat]
    return flat.tolist()


def encode_raw_tensor(array: np.ndarray) -> bytes:
    if array.dtype == np.object_:
        return serialize_bytes_tensor(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def encode_http_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """The response body, and the JSON length when binary tensors follow it (else None)."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in response.outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if request.binary_outputs.get(name, request.binary_default):
            blob = encode_raw_tensor(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(array)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": str(response.model_version), "outputs": outputs}
    if response.id is not None:
        doc["id"] = response.id
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
