"""HTTP for generative models: the OpenAI API (`/v1/...`) and KServe v2 `generate`.

Every answer carries the engine's load in ORCA's `endpoint-load-metrics` header, so a proxy
can balance on it without scraping. Errors on `/v1/` use OpenAI's error object, whatever
raised them (a bad body, an unknown route, a full queue).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from inference import tracing
from inference.errors import DeadlineExceeded, InferenceError, InternalError, InvalidInput, NotFound, Unavailable
from inference.generate.engine import Engine, QueueFull
from inference.generate.requests import ChatCompletionRequest, CompletionRequest, GenerateRequest, first_error, stop_strings
from inference.generate.sequence import FinishReason, Output
from inference.generate.service import ContextLengthExceeded, GenerationService, InvalidParam, Sampling, Submission
from inference.load import ORCA_HEADER

log = logging.getLogger("inference.generate.http")

PRIORITY_HEADER = "x-sluice-priority"
DEADLINE_HEADER = "x-sluice-deadline-ms"
# The edge's llm filter sets it to "close" on the OpenAI streams it ends itself (filters/llm/ending.zig).
FRAMING_HEADER = "x-sluice-stream-framing"
RETRY_AFTER_S = 1

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class BodyTooLarge(InvalidInput):
    pass


class CloseDelimitedResponse(web.StreamResponse):
    """An HTTP/1.1 response without chunked encoding or a length: its body ends when the server
    closes the connection. Envoy's HTTP/1 client takes that close as the response's end even when
    this process dies mid-stream, where a cut chunked response makes it reset the client's stream
    with no chance for a filter to add anything; so the edge can end such a stream itself."""

    # aiohttp chunks every HTTP/1.1 response without a length; this class attribute is its one
    # switch for "neither" (its own WebSocketResponse sets it the same way).
    _length_check = False

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__(headers=headers)
        self.force_close()


@dataclass(frozen=True)
class ApiError:
    """An error in OpenAI's terms: status, message, type, param, code."""

    status: int
    message: str
    kind: str
    param: str | None = None
    code: str | None = None

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def openai_error(error: Exception) -> ApiError:
    if isinstance(error, ContextLengthExceeded):
        return ApiError(400, str(error), "invalid_request_error", error.param, "context_length_exceeded")
    if isinstance(error, InvalidParam):
        return ApiError(400, str(error), "invalid_request_error", error.param, "invalid_value")
    if isinstance(error, BodyTooLarge):
        return ApiError(413, str(error), "invalid_request_error", None, "request_too_large")
    if isinstance(error, NotFound):
        return ApiError(404, str(error), "invalid_request_error", "model", "model_not_found")
    if isinstance(error, InvalidInput):
        return ApiError(400, str(error), "invalid_request_error")
    if isinstance(error, QueueFull):
        return ApiError(429, str(error), "rate_limit_exceeded", None, "queue_full")
    if isinstance(error, Unavailable):
        return ApiError(503, str(error), "service_unavailable")
    if isinstance(error, DeadlineExceeded):
        return ApiError(504, str(error), "timeout")
    if isinstance(error, InternalError):
        return ApiError(500, str(error), "server_error")
    log.error("unexpected error in a generation request", exc_info=error)
    return ApiError(500, "internal error", "server_error")


def _kserve_status(error: InferenceError) -> int:
    return openai_error(error).status


class GenerateHttpApi:
    def __init__(self, generation: GenerationService, max_body_bytes: int, is_draining: Callable[[], bool], track: Callable[[], Any]) -> None:
        self.generation = generation
        self.max_body_bytes = max_body_bytes
        self.is_draining = is_draining
        # The core service's in-flight tracker: a draining server waits for open streams too.
        self.track = track

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/models", self.list_models),
            web.get("/v1/models/{model}", self.get_model),
            web.post("/v1/chat/completions", self.chat_completions),
            web.post("/v1/completions", self.completions),
            web.post("/v2/models/{model}/generate", self.kserve_generate),
            web.post("/v2/models/{model}/generate_stream", self.kserve_generate_stream),
        ]

    @web.middleware
    async def openai_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Inside the server's own error middleware: /v1/ answers in OpenAI's shape."""
        if not request.path.startswith("/v1/"):
            return await handler(request)
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            api = ApiError(error.status, f"{error.reason}: {request.method} {request.path}", "invalid_request_error")
        except Exception as error:  # noqa: BLE001 - every failure leaves in OpenAI's shape
            api = openai_error(error)
        headers = {"Retry-After": str(RETRY_AFTER_S)} if api.status in (429, 503) else {}
        return web.json_response(api.body(), status=api.status, headers=headers)

    # -- models ----------------------------------------------------------------------------

    def _model_card(self, engine: Engine) -> dict[str, object]:
        return {"id": engine.config.name, "object": "model", "created": 0, "owned_by": "sluice", "max_model_len": engine.config.max_model_len}

    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._model_card(e) for e in self.generation.models.loaded()]})

    async def get_model(self, request: web.Request) -> web.Response:
        return web.json_response(self._model_card(self.generation.models.get(request.match_info["model"])))

    # -- OpenAI ----------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = self._validate(ChatCompletionRequest, await self._json(request))
        assert isinstance(body, ChatCompletionRequest)
        engine = self._engine(body.model)
        ids = await self.generation.tokenize(engine, body.prompt_text(), "messages")
        sub = self._submit(request, engine, ids, body, body.requested_max_tokens(), "messages")
        return await self._respond(request, sub, body, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = self._validate(CompletionRequest, await self._json(request))
        assert isinstance(body, CompletionRequest)
        engine = self._engine(body.model)
        ids = await self.generation.tokenize(engine, body.prompt, "prompt")
        sub = self._submit(request, engine, ids, body, body.requested_max_tokens(), "prompt")
        return await self._respond(request, sub, body, chat=False)

    async def _respond(
        self, request: web.Request, sub: Submission, body: ChatCompletionRequest | CompletionRequest, chat: bool
    ) -> web.StreamResponse:
        prefix, kind = ("chatcmpl", "chat.completion") if chat else ("cmpl", "text_completion")
        ident, created, model = f"{prefix}-{sub.seq.request_id}", int(time.time()), sub.engine.config.name
        with self.track():
            if not body.stream:
                text, reason = await self._collect(request, sub)
                choice: dict[str, object] = {"index": 0, "logprobs": None, "finish_reason": reason}
                choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
                return web.json_response(
                    {"id": ident, "object": kind, "created": created, "model": model, "choices": [choice], "usage": self._usage(sub)},
                    headers=self._headers(sub.engine),
                )
            usage = body.stream_options is not None and body.stream_options.include_usage
            kind += ".chunk" if chat else ""

            def chunk(delta: str | None, reason: str | None, first: bool = False) -> dict[str, object]:
                choice: dict[str, object] = {"index": 0, "logprobs": None, "finish_reason": reason}
                if chat:
                    choice["delta"] = ({"role": "assistant", "content": ""} if first else {}) | ({"content": delta} if delta else {})
                else:
                    choice["text"] = delta or ""
                event: dict[str, object] = {"id": ident, "object": kind, "created": created, "model": model, "choices": [choice]}
                if usage:
                    event["usage"] = None
                return event

            async def events() -> AsyncIterator[dict[str, object]]:
                first = chat
                async for out in self._outputs(request, sub):
                    if first:
                        yield chunk(None, None, first=True)
                        first = False
                    if out.text or out.finish_reason is not None:
                        yield chunk(out.text, _reason(out.finish_reason))
                if usage:
                    yield {"id": ident, "object": kind, "created": created, "model": model, "choices": [], "usage": self._usage(sub)}

            return await self._stream(request, sub, events(), done=True)

    # -- KServe v2 generate ----------------------------------------------------------------

    async def kserve_generate(self, request: web.Request) -> web.StreamResponse:
        try:
            sub = await self._kserve_submit(request)
            with self.track():
                text, _ = await self._collect(request, sub)
        except InferenceError as error:
            return web.json_response({"error": str(error)}, status=_kserve_status(error))
        name = sub.engine.config.name
        return web.json_response({"model_name": name, "model_version": "1", "text_output": text}, headers=self._headers(sub.engine))

    async def kserve_generate_stream(self, request: web.Request) -> web.StreamResponse:
        try:
            sub = await self._kserve_submit(request)
        except InferenceError as error:
            return web.json_response({"error": str(error)}, status=_kserve_status(error))
        name = sub.engine.config.name

        async def events() -> AsyncIterator[dict[str, object]]:
            async for out in self._outputs(request, sub):
                if out.text or out.finish_reason is not None:
                    event: dict[str, object] = {"model_name": name, "model_version": "1", "text_output": out.text}
                    if out.finish_reason is not None:
                        event["finish_reason"] = _reason(out.finish_reason)
                    yield event

        with self.track():
            return await self._stream(request, sub, events(), done=False)

    async def _kserve_submit(self, request: web.Request) -> Submission:
        body = self._validate(GenerateRequest, await self._json(request))
        assert isinstance(body, GenerateRequest)
        engine = self._engine(request.match_info["model"])
        ids = await self.generation.tokenize(engine, body.text_input, "text_input")
        return self._submit(request, engine, ids, body.parameters, body.parameters.max_tokens, "text_input")

    # -- shared ----------------------------------------------------------------------------

    def _engine(self, name: str) -> Engine:
        if self.is_draining():
            raise Unavailable("server is shutting down")
        return self.generation.models.get(name)

    async def _json(self, request: web.Request) -> Any:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise BodyTooLarge(f"request body is {request.content_length} bytes; the limit is {self.max_body_bytes}")
        raw = bytearray()
        async for piece in request.content.iter_chunked(1 << 16):
            raw += piece
            if len(raw) > self.max_body_bytes:
                raise BodyTooLarge(f"request body exceeds the limit of {self.max_body_bytes} bytes")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as error:
            raise InvalidInput(f"request body is not valid JSON: {error}") from None

    @staticmethod
    def _validate(model: type[ChatCompletionRequest | CompletionRequest | GenerateRequest], raw: Any) -> Any:
        if not isinstance(raw, dict):
            raise InvalidInput("request body must be a JSON object")
        try:
            return model.model_validate(raw)
        except ValidationError as error:
            param, message = first_error(error.errors(include_url=False))
            raise InvalidParam(message, param or None) from None

    def _submit(self, request: web.Request, engine: Engine, ids: list[int], body: Any, max_tokens: int | None, param: str) -> Submission:
        sampling = Sampling(
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=stop_strings(body.stop),
            ignore_eos=body.ignore_eos,
        )
        priority = _int_header(request, PRIORITY_HEADER, -(2**31), 2**31 - 1) or 0
        deadline_ms = _int_header(request, DEADLINE_HEADER, 1, 86_400_000)
        return self.generation.submit(engine, ids, sampling, param, priority, None if deadline_ms is None else deadline_ms / 1000)

    async def _outputs(self, request: web.Request, sub: Submission) -> AsyncIterator[Output]:
        """The sequence's outputs, stopping it as soon as its client has gone."""
        span = tracing.current()  # the request's span when traced: prefill and decode go under it
        try:
            async for out in sub.engine.outputs(sub.seq):
                if out.error is not None:
                    raise out.error
                yield out
                if request.transport is None or request.transport.is_closing():
                    sub.engine.cancel(sub.seq)
                    return
        finally:
            seq = sub.seq
            tracing.generation_spans(span, seq.arrival, seq.first_token_at, seq.last_token_at, {
                "gen_ai.request.model": sub.engine.config.name, "gen_ai.usage.input_tokens": len(seq.prompt),
                "gen_ai.usage.output_tokens": seq.generated})

    async def _collect(self, request: web.Request, sub: Submission) -> tuple[str, str | None]:
        text, reason = [], None
        async for out in self._outputs(request, sub):
            text.append(out.text)
            reason = _reason(out.finish_reason)
        return "".join(text), reason

    async def _stream(self, request: web.Request, sub: Submission, events: AsyncIterator[dict[str, object]], done: bool) -> web.StreamResponse:
        # Wait for the first output before the headers: an error up to then (a deadline, the
        # server closing) still gets its own status code instead of an event in a 200 stream.
        try:
            first = await anext(events)
        except InferenceError as error:
            if done:
                raise
            return web.json_response({"error": str(error)}, status=_kserve_status(error))
        headers = _SSE_HEADERS | self._headers(sub.engine)
        # Only on request: a client reading the backend directly would see a cut close-delimited
        # stream as one that ended (an OpenAI client just stops without [DONE]); a cut chunked
        # one is an error it reports.
        response = (CloseDelimitedResponse(headers) if request.headers.get(FRAMING_HEADER) == "close"
                    else web.StreamResponse(headers=headers))
        await response.prepare(request)
        try:
            await response.write(f"data: {json.dumps(first, separators=(',', ':'))}\n\n".encode())
            async for event in events:
                await response.write(f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode())
            if done:
                await response.write(b"data: [DONE]\n\n")
        except InferenceError as error:
            # Headers are gone: the error travels as the stream's last event, and on the OpenAI API
            # [DONE] still ends it (vLLM's shape), which tells the edge the stream is complete.
            body = openai_error(error).body() if done else {"error": str(error)}
            await response.write(f"data: {json.dumps(body)}\n\n".encode() + (b"data: [DONE]\n\n" if done else b""))
        except (ConnectionResetError, ConnectionError):
            sub.engine.cancel(sub.seq)
            return response
        await response.write_eof()
        return response

    @staticmethod
    def _usage(sub: Submission) -> dict[str, int]:
        completion = sub.seq.generated
        return {"prompt_tokens": sub.prompt_tokens, "completion_tokens": completion, "total_tokens": sub.prompt_tokens + completion}

    @staticmethod
    def _headers(engine: Engine) -> dict[str, str]:
        return {ORCA_HEADER: engine.load().orca(), "x-model-name": engine.config.name}


def _reason(reason: FinishReason | None) -> str | None:
    # A client that went away sees nothing; the rest are OpenAI's own values.
    return None if reason is None else reason.value


def _int_header(request: web.Request, name: str, low: int, high: int) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParam(f"header {name} must be an integer, got {raw!r}", name) from None
    if not low <= value <= high:
        raise InvalidParam(f"header {name} must be between {low} and {high}, got {value}", name)
    return value
