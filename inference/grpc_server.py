"""KServe v2 / Open Inference Protocol over gRPC: `inference.GRPCInferenceService` on grpcio aio.

The message and service stubs are the ones compiled into `tritonclient.grpc` (package
`inference`, generated from Triton's grpc_service.proto), so client and server agree on
the wire by construction. They are imported only when --grpc-port is set.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from inference.datatypes import datatype_of, numpy_dtype
from inference.errors import (
    DeadlineExceeded,
    Forbidden,
    InferenceError,
    InternalError,
    InvalidInput,
    NotFound,
    Throttled,
    Unauthenticated,
    Unavailable,
)
from inference.load import ORCA_HEADER
from inference.model_control import ModelControl
from inference.protocol import (
    CACHE_HEADER,
    MODEL_NAME_HEADER,
    MODEL_VERSION_HEADER,
    InferRequest,
    InferResponse,
    check_datatype,
    check_shape,
    decode_raw_tensor,
    encode_raw_tensor,
)
from inference.service import InferenceService

log = logging.getLogger("inference.grpc")

_CODES = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Throttled: grpc.StatusCode.RESOURCE_EXHAUSTED,
    InternalError: grpc.StatusCode.INTERNAL,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
}

# Which InferTensorContents field carries each datatype when a client does not send raw bytes.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def code_of(error: InferenceError) -> grpc.StatusCode:
    for kind, code in _CODES.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _parameter(param: service_pb2.InferParameter) -> Any:
    kind = param.WhichOneof("parameter_choice")
    return getattr(param, kind) if kind else None


def _int_parameter(params: Any, name: str) -> int | None:
    if name not in params:
        return None
    value = _parameter(params[name])
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"parameter {name!r} must be a non-negative integer, got {value!r}")
    return value


def decode_request(request: service_pb2.ModelInferRequest, deadline_s: float | None) -> InferRequest:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    if not request.inputs:
        raise InvalidInput("request needs at least one input")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        what = f"input {tensor.name!r}"
        if not tensor.name:
            raise InvalidInput(f"inputs[{i}] needs a 'name'")
        if tensor.name in inputs:
            raise InvalidInput(f"{what} appears twice")
        datatype = check_datatype(tensor.datatype, what)
        shape = check_shape(list(tensor.shape), what)
        if raw:
            inputs[tensor.name] = decode_raw_tensor(raw[i], datatype, shape, what)
            continue
        field = _CONTENTS_FIELD.get(datatype)
        if field is None:
            raise InvalidInput(f"{what}: {datatype} must be sent in raw_input_contents")
        values = list(getattr(tensor.contents, field))
        count = int(np.prod(shape))
        if len(values) != count:
            raise InvalidInput(f"{what} has {len(values)} elements in {field} but shape {shape} needs {count}")
        array = np.empty(count, dtype=np.object_) if datatype == "BYTES" else None
        if array is not None:
            array[:] = values
        else:
            try:
                array = np.asarray(values, dtype=numpy_dtype(datatype))
            except OverflowError as error:
                raise InvalidInput(f"{what}: {error}") from None
        inputs[tensor.name] = array.reshape(shape)

    timeout_us = _int_parameter(request.parameters, "timeout")
    timeout_s = timeout_us / 1e6 if timeout_us else None
    if deadline_s is not None:
        # The client's gRPC deadline bounds the queueing too: there is no one to answer after it.
        timeout_s = deadline_s if timeout_s is None else min(timeout_s, deadline_s)
    return InferRequest(
        inputs=inputs,
        outputs=[out.name for out in request.outputs] or None,
        id=request.id or None,
        priority=_int_parameter(request.parameters, "priority"),
        timeout_s=timeout_s,
    )


def encode_response(response: InferResponse) -> service_pb2.ModelInferResponse:
    message = service_pb2.ModelInferResponse(
        model_name=response.model_name, model_version=str(response.model_version), id=response.id or ""
    )
    for name, array in response.outputs.items():
        message.outputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        message.raw_output_contents.append(encode_raw_tensor(array))
    return message


Unary = Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def _aborts_on_error(method: Unary) -> Unary:
    """End the call with the gRPC status matching the core's error, and its message."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, request, context)
        except InferenceError as error:
            await context.abort(code_of(error), str(error))
        except grpc.aio.AbortError:
            raise
        except Exception:  # noqa: BLE001 - a bug answers INTERNAL without its text, which may name internals
            log.exception("gRPC %s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log says why")

    return wrapper


def _authorization(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    value = next((value for key, value in context.invocation_metadata() or () if key == "authorization"), None)
    return value.decode() if isinstance(value, bytes) else value


class GrpcApi(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]  # tritonclient ships no type information
    def __init__(self, service: InferenceService, model_control: ModelControl | None = None) -> None:
        self.service = service
        self.model_control = model_control or ModelControl()

    @_aborts_on_error
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=True)

    @_aborts_on_error
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=self.service.ready())

    @_aborts_on_error
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> service_pb2.ModelReadyResponse:
        return service_pb2.ModelReadyResponse(ready=self.service.model_ready(request.name, request.version or None))

    @_aborts_on_error
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> service_pb2.ServerMetadataResponse:
        return json_format.ParseDict(self.service.server_metadata(), service_pb2.ServerMetadataResponse())

    @_aborts_on_error
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> service_pb2.ModelMetadataResponse:
        meta = self.service.model_metadata(request.name, request.version or None)
        return json_format.ParseDict(meta, service_pb2.ModelMetadataResponse())

    @_aborts_on_error
    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> service_pb2.ModelConfigResponse:
        config = self.service.model_config(request.name, request.version or None)
        # Our YAML-only fields (cache TTL, deterministic) have no place in Triton's message.
        proto = json_format.ParseDict(config, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
        return service_pb2.ModelConfigResponse(config=proto)

    @_aborts_on_error
    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> service_pb2.ModelStatisticsResponse:
        stats = self.service.model_stats(request.name or None, request.version or None)
        return json_format.ParseDict({"model_stats": stats}, service_pb2.ModelStatisticsResponse())

    @_aborts_on_error
    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> service_pb2.RepositoryIndexResponse:
        self.model_control.check(_authorization(context))
        entries = self.service.repository_index(ready_only=request.ready)
        return json_format.ParseDict({"models": entries}, service_pb2.RepositoryIndexResponse())

    @_aborts_on_error
    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> service_pb2.RepositoryModelLoadResponse:
        self.model_control.check(_authorization(context))
        if set(request.parameters) - {"unload_dependents"}:
            raise InvalidInput("load parameters (config override, file contents) are not supported: edit config.yaml instead")
        await self.service.load_model(request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    @_aborts_on_error
    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> service_pb2.RepositoryModelUnloadResponse:
        self.model_control.check(_authorization(context))
        await self.service.unload_model(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    async def _infer(self, request: service_pb2.ModelInferRequest, deadline_s: float | None) -> InferResponse:
        self.service.resolve(request.model_name, request.model_version or None)
        decoded = decode_request(request, deadline_s)
        return await self.service.infer(request.model_name, request.model_version or None, decoded)

    @_aborts_on_error
    async def ModelInfer(self, request: service_pb2.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]) -> service_pb2.ModelInferResponse:
        response = await self._infer(request, context.time_remaining())
        metadata = [(MODEL_NAME_HEADER, response.model_name), (MODEL_VERSION_HEADER, str(response.model_version))]
        if response.cached:
            metadata.append((CACHE_HEADER, "hit"))
        await context.send_initial_metadata(metadata)
        # ORCA's place on gRPC is the trailers: the load as the answer leaves.
        context.set_trailing_metadata([(ORCA_HEADER, self.service.load().orca())])
        return encode_response(response)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[service_pb2.ModelInferRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Requests on one stream run concurrently; each answer (or error) carries its request id."""
        answers: asyncio.Queue[service_pb2.ModelStreamInferResponse | None] = asyncio.Queue()

        async def answer(request: service_pb2.ModelInferRequest) -> None:
            try:
                response = encode_response(await self._infer(request, context.time_remaining()))
                await answers.put(service_pb2.ModelStreamInferResponse(infer_response=response))
            except InferenceError as error:
                failed = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
                await answers.put(service_pb2.ModelStreamInferResponse(error_message=str(error), infer_response=failed))

        async def read() -> None:
            pending: set[asyncio.Task[None]] = set()
            try:
                async for request in request_iterator:
                    task = asyncio.ensure_future(answer(request))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                await asyncio.gather(*pending)
            finally:
                await answers.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await answers.get()) is not None:
                yield item
        finally:
            reader.cancel()


async def start_grpc_server(
    service: InferenceService, host: str, port: int, max_message_bytes: int, model_control: ModelControl | None = None
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(GrpcApi(service, model_control), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound
