"""KServe v2 / Open Inference Protocol over HTTP (aiohttp)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from inference import tracing
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
from inference.generate.http_api import GenerateHttpApi
from inference.generate.metrics import render as render_generation_metrics
from inference.generate.service import GenerationService
from inference.load import ORCA_HEADER
from inference.load import render as render_load
from inference.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from inference.metrics import render as render_metrics
from inference.model_control import ModelControl
from inference.protocol import (
    CACHE_HEADER,
    HEADER_CONTENT_LENGTH,
    MODEL_NAME_HEADER,
    MODEL_VERSION_HEADER,
    decode_http_request,
    encode_http_response,
)
from inference.service import InferenceService

log = logging.getLogger("inference.http")

# Bodies above this are parsed and encoded in a worker thread: JSON for a batch of images
# takes milliseconds, which would stall every other request on the event loop.
OFFLOAD_BYTES = 64 * 1024

TOO_DEEP = "request body is not valid JSON: it nests too deeply"

_STATUS = {
    NotFound: 404, InvalidInput: 400, Unauthenticated: 401, Forbidden: 403, Unavailable: 503, DeadlineExceeded: 504, InternalError: 500,
    Throttled: 429,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def status_of(error: InferenceError) -> int:
    for kind, status in _STATUS.items():
        if isinstance(error, kind):
            return status
    return 500


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as {"error": "..."} with the status the protocol prescribes."""
    try:
        return await handler(request)
    except InferenceError as error:
        response = error_response(status_of(error), str(error))
        if isinstance(error, Throttled):
            response.headers["Retry-After"] = str(error.retry_after_s)
        return response
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return error_response(error.status, f"{error.reason}: {request.method} {request.path}")
    except Exception:  # noqa: BLE001 - a bug must still answer in the protocol's shape
        # The traceback goes to the log, never to the client: it may name paths or data.
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal error; the server's log has the details")


def _load_report(service: InferenceService) -> Any:
    """Every infer answer, failures included, carries the server's load for the balancer."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.path.endswith("/infer"):
            response.headers[ORCA_HEADER] = service.load().orca()
        return response

    return middleware


class HttpApi:
    def __init__(self, service: InferenceService, generation: GenerationService | None = None,
                 model_control: ModelControl | None = None) -> None:
        self.service = service
        self.generation = generation
        self.model_control = model_control or ModelControl()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v2", self.server_metadata),
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            # Before /v2/models/{model}, which would otherwise take "stats" for a model name.
            web.get("/v2/models/stats", self.model_stats),
            web.get("/v2/models/{model}", self.model_metadata),
            web.get("/v2/models/{model}/versions/{version}", self.model_metadata),
            web.get("/v2/models/{model}/ready", self.model_ready),
            web.get("/v2/models/{model}/versions/{version}/ready", self.model_ready),
            web.post("/v2/models/{model}/infer", self.infer),
            web.post("/v2/models/{model}/versions/{version}/infer", self.infer),
            web.get("/v2/models/{model}/config", self.model_config),
            web.get("/v2/models/{model}/versions/{version}/config", self.model_config),
            web.get("/v2/models/{model}/stats", self.model_stats),
            web.get("/v2/models/{model}/versions/{version}/stats", self.model_stats),
            web.post("/v2/repository/index", self.repository_index),
            web.post("/v2/repository/models/{model}/load", self.load_model),
            web.post("/v2/repository/models/{model}/unload", self.unload_model),
            web.get("/metrics", self.metrics),
        ]

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self.service.server_metadata())

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.service.ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def model_metadata(self, request: web.Request) -> web.Response:
        info = request.match_info
        return web.json_response(self.service.model_metadata(info["model"], info.get("version")))

    async def model_ready(self, request: web.Request) -> web.Response:
        info = request.match_info
        ready = self.service.model_ready(info["model"], info.get("version"))
        body: dict[str, Any] = {"name": info["model"], "ready": ready}
        if "version" in info:
            body["version"] = info["version"]
        return web.json_response(body, status=200 if ready else 503)

    async def model_config(self, request: web.Request) -> web.Response:
        info = request.match_info
        return web.json_response(self.service.model_config(info["model"], info.get("version")))

    async def model_stats(self, request: web.Request) -> web.Response:
        info = request.match_info
        return web.json_response({"model_stats": self.service.model_stats(info.get("model"), info.get("version"))})

    async def repository_index(self, request: web.Request) -> web.Response:
        self.model_control.check(request.headers.get("Authorization"))
        body = await _optional_json(request)
        return web.json_response(self.service.repository_index(ready_only=bool(body.get("ready", False))))

    async def load_model(self, request: web.Request) -> web.Response:
        self.model_control.check(request.headers.get("Authorization"))
        body = await _optional_json(request)
        if (body.get("parameters") or {}).keys() - {"unload_dependents"}:
            raise InvalidInput("load parameters (config override, file contents) are not supported: edit config.yaml instead")
        await self.service.load_model(request.match_info["model"])
        return web.json_response({})

    async def unload_model(self, request: web.Request) -> web.Response:
        self.model_control.check(request.headers.get("Authorization"))
        await self.service.unload_model(request.match_info["model"])
        return web.json_response({})

    async def metrics(self, request: web.Request) -> web.Response:
        text = render_metrics(mv.stats for mv in self.service.repository.loaded()) + render_load(self.service.load())
        if self.generation is not None:
            text += render_generation_metrics([(e.stats, e.load()) for e in self.generation.models.loaded()])
        return web.Response(text=text, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def infer(self, request: web.Request) -> web.Response:
        info = request.match_info
        self.service.resolve(info["model"], info.get("version"))
        header_length = _header_length(request)
        body = await request.read()
        try:
            infer_request = await _maybe_offload(len(body), decode_http_request, body, header_length)
        except RecursionError:  # the JSON parser recurses per level: a body can nest deeper than the stack
            raise InvalidInput(TOO_DEEP) from None
        response = await self.service.infer(info["model"], info.get("version"), infer_request)
        payload, json_length = await _maybe_offload(
            sum(a.nbytes for a in response.outputs.values()), encode_http_response, response, infer_request
        )
        headers = {MODEL_NAME_HEADER: response.model_name, MODEL_VERSION_HEADER: str(response.model_version)}
        if response.cached:
            headers[CACHE_HEADER] = "hit"
        if json_length is None:
            return web.Response(body=payload, headers=headers, content_type="application/json")
        headers[HEADER_CONTENT_LENGTH] = str(json_length)
        return web.Response(body=payload, headers=headers, content_type="application/octet-stream")


async def _optional_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidInput(f"request body is not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidInput(TOO_DEEP) from None
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    return body


def _header_length(request: web.Request) -> int | None:
    raw = request.headers.get(HEADER_CONTENT_LENGTH)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{HEADER_CONTENT_LENGTH} must be an integer, got {raw!r}") from None


async def _maybe_offload(size: int, fn: Callable[..., Any], *args: Any) -> Any:
    if size < OFFLOAD_BYTES:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def create_app(
    service: InferenceService, max_request_bytes: int, generation: GenerationService | None = None, max_generate_bytes: int = 8 << 20,
    model_control: ModelControl | None = None,
) -> web.Application:
    # Outermost: the server span sees the status the error middleware chose.
    middlewares: list[Any] = [tracing.middleware, _load_report(service), _errors]
    routes = HttpApi(service, generation, model_control).routes()
    if generation is not None:
        api = GenerateHttpApi(generation, max_generate_bytes, lambda: service.draining, service.in_flight.track)
        middlewares.append(api.openai_errors)
        routes += api.routes()
    app = web.Application(middlewares=middlewares, client_max_size=max_request_bytes)
    app.add_routes(routes)
    return app
