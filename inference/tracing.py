"""Traces: the backend continues a sampled W3C trace and exports its spans over OTLP/gRPC.

The edge Envoy decides whether a request is traced; its decision arrives in `traceparent`
(flag 01). For such a request the backend records a server span (a child of the caller's span)
and, inside it, the stages of its work: for tensors `queue` (waiting in the batching queue),
`batch` (merging inputs) and `model run`; for generation `prefill` and `decode`. Requests
without a sampled `traceparent` cost one header lookup.

Spans go to a bounded queue that a thread drains to the collector in batches (the OpenTelemetry
SDK's BatchSpanProcessor, reduced to what this needs): a slow or absent collector drops spans,
never delays a request.
"""

from __future__ import annotations

import contextvars
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

log = logging.getLogger("inference.tracing")

TRACEPARENT = "traceparent"
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
QUEUE_SPANS = 8192  # spans waiting for export; beyond it new ones are dropped (and counted)
BATCH_SPANS = 512
FLUSH_S = 0.5


@dataclass(frozen=True)
class SpanContext:
    trace_id: bytes
    span_id: bytes


@dataclass
class Recorded:
    name: str
    context: SpanContext
    parent_id: bytes
    start_ns: int
    end_ns: int
    kind: int = Span.SPAN_KIND_INTERNAL
    attributes: dict[str, str | int | float | bool] = field(default_factory=dict)
    error: bool = False


def parse_traceparent(value: str | None) -> SpanContext | None:
    """The caller's span if `value` is a valid, sampled traceparent (version 00 or later)."""
    if not value:
        return None
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None or m.group(1) == "ff" or (m.group(1) == "00" and m.group(5)):
        return None
    trace_id, span_id = bytes.fromhex(m.group(2)), bytes.fromhex(m.group(3))
    if not any(trace_id) or not any(span_id) or not int(m.group(4), 16) & 1:
        return None
    return SpanContext(trace_id, span_id)


def _new_span_id() -> bytes:
    while True:
        out = os.urandom(8)
        if any(out):
            return out


def _value(v: str | int | float | bool) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    return AnyValue(string_value=str(v))


def to_proto(span: Recorded) -> Span:
    return Span(
        trace_id=span.context.trace_id, span_id=span.context.span_id, parent_span_id=span.parent_id,
        name=span.name, kind=span.kind,  # type: ignore[arg-type]
        start_time_unix_nano=span.start_ns, end_time_unix_nano=max(span.end_ns, span.start_ns),
        attributes=[KeyValue(key=k, value=_value(v)) for k, v in span.attributes.items()],
        status=Status(code=Status.STATUS_CODE_ERROR if span.error else Status.STATUS_CODE_UNSET),
    )


class Exporter:
    """A thread sending batches of spans to an OTLP/gRPC collector."""

    def __init__(self, endpoint: str, service_name: str) -> None:
        self.endpoint = endpoint
        self.resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service_name))])
        self.scope = InstrumentationScope(name="sluice.inference")
        self.queue: queue.Queue[Recorded | None] = queue.Queue(QUEUE_SPANS)
        self.dropped = 0
        self.exported = 0
        self._channel = grpc.insecure_channel(endpoint)
        self._stub = TraceServiceStub(self._channel)  # type: ignore[no-untyped-call]  # generated stubs carry no annotations
        self._last_error_log = 0.0
        self._thread = threading.Thread(target=self._run, name="otlp-exporter", daemon=True)
        self._thread.start()

    def offer(self, span: Recorded) -> None:
        try:
            self.queue.put_nowait(span)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[Recorded] = []
            deadline = time.monotonic() + FLUSH_S
            while len(batch) < BATCH_SPANS:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            if batch:
                self._export(batch)

    def _export(self, batch: list[Recorded]) -> None:
        request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
            resource=self.resource, scope_spans=[ScopeSpans(scope=self.scope, spans=[to_proto(s) for s in batch])])])
        try:
            self._stub.Export(request, timeout=5.0)
            self.exported += len(batch)
        except grpc.RpcError as error:
            self.dropped += len(batch)
            now = time.monotonic()
            if now - self._last_error_log > 60:
                self._last_error_log = now
                log.warning("could not export %d span(s) to %s: %s", len(batch), self.endpoint,
                            error.code() if hasattr(error, "code") else error)

    def close(self, timeout_s: float = 5.0) -> None:
        try:
            self.queue.put(None, timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)
        self._channel.close()


_exporter: Exporter | None = None
_current: contextvars.ContextVar[SpanContext | None] = contextvars.ContextVar("sluice_span", default=None)


def configure(endpoint: str | None, service_name: str = "sluice-backend") -> None:
    """Export to `endpoint` (HOST:PORT of an OTLP/gRPC collector); None: trace nothing."""
    global _exporter
    shutdown()
    if endpoint:
        _exporter = Exporter(endpoint, service_name)
        log.info("tracing: continuing sampled traceparent, exporting spans to %s over OTLP/gRPC", endpoint)


def shutdown() -> None:
    global _exporter
    if _exporter is not None:
        _exporter.close()
        _exporter = None


def current() -> SpanContext | None:
    """The span of the request being served, when it is traced."""
    return _current.get()


def record(name: str, parent: SpanContext, start_ns: int, end_ns: int,
           attributes: dict[str, str | int | float | bool] | None = None, error: bool = False) -> None:
    """A child span of `parent`, times in ns since the epoch."""
    if _exporter is not None:
        _exporter.offer(Recorded(name, SpanContext(parent.trace_id, _new_span_id()), parent.span_id,
                                 start_ns, end_ns, attributes=attributes or {}, error=error))


def perf_to_wall(perf_ns: int) -> int:
    """A `time.perf_counter_ns()` reading as ns since the epoch."""
    return perf_ns + time.time_ns() - time.perf_counter_ns()


def monotonic_to_wall(seconds: float) -> int:
    """A `time.monotonic()` reading as ns since the epoch."""
    return int(seconds * 1e9) + time.time_ns() - time.monotonic_ns()


def batch_spans(traced: Iterable[tuple[SpanContext, int]], started_ns: int, merged_ns: int, ran_ns: int,
                attributes: dict[str, str | int | float | bool]) -> None:
    """For each traced request of a batch (its span, when it was queued; perf_counter ns):
    `queue`, then `batch` (merging the inputs), then `model run`."""
    if _exporter is None:
        return
    offset = time.time_ns() - time.perf_counter_ns()
    for parent, enqueued_ns in traced:
        record("queue", parent, enqueued_ns + offset, started_ns + offset, {"model": attributes.get("model", "")})
        record("batch", parent, started_ns + offset, merged_ns + offset, attributes)
        record("model run", parent, merged_ns + offset, ran_ns + offset, attributes)


def generation_spans(parent: SpanContext | None, arrival: float, first_token_at: float | None,
                     last_token_at: float | None, attributes: dict[str, str | int | float | bool]) -> None:
    """`prefill` (arrival until the first token: waiting for a place in the batch, then the prompt)
    and `decode` (first token until the last), from a finished sequence's monotonic timestamps."""
    if _exporter is None or parent is None or first_token_at is None:
        return
    offset = time.time_ns() - time.monotonic_ns()
    record("prefill", parent, int(arrival * 1e9) + offset, int(first_token_at * 1e9) + offset, attributes)
    if last_token_at is not None:
        record("decode", parent, int(first_token_at * 1e9) + offset, int(last_token_at * 1e9) + offset, attributes)


def _route_name(request: web.Request) -> str:
    info: Any = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    return f"{request.method} {resource.canonical if resource is not None else request.path}"


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The server span of a request whose traceparent says it is sampled; its children find it
    through `current()` (the context variable follows the handler's task)."""
    parent = parse_traceparent(request.headers.get(TRACEPARENT)) if _exporter is not None else None
    if parent is None:
        return await handler(request)
    ctx = SpanContext(parent.trace_id, _new_span_id())
    token = _current.set(ctx)
    started = time.time_ns()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        _current.reset(token)
        if _exporter is not None:
            _exporter.offer(Recorded(
                _route_name(request), ctx, parent.span_id, started, time.time_ns(), kind=Span.SPAN_KIND_SERVER,
                attributes={"http.request.method": request.method, "url.path": request.path,
                            "http.response.status_code": status},
                error=status >= 500))
