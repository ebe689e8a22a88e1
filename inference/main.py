"""`python -m inference`: the backend process (KServe v2 over HTTP and gRPC, ONNX Runtime)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from pydantic import ValidationError

from inference import tracing
from inference.generate.registry import GenerativeModels
from inference.generate.service import GenerationService
from inference.http_server import create_app
from inference.model_control import ModelControl
from inference.repository import ModelRepository
from inference.runtime import RuntimeOptions, cpu_count, usable_providers
from inference.service import Faults, InferenceService
from inference.settings import ENV_PREFIX, BackendSettings

log = logging.getLogger("inference")

# How long HTTP and gRPC may take to finish responses once listeners close; drain already waited.
_SHUTDOWN_GRACE_S = 2.0


def build_parser() -> argparse.ArgumentParser:
    fields = BackendSettings.model_fields
    parser = argparse.ArgumentParser(
        prog="python -m inference",
        description=(
            "Serve ONNX models over the KServe v2 / Open Inference Protocol (HTTP, and gRPC with --grpc-port). "
            f"Every option can also be set as an environment variable {ENV_PREFIX}<OPTION> "
            f"(e.g. {ENV_PREFIX}HTTP_PORT=8002); the command line wins."
        ),
        argument_default=argparse.SUPPRESS,
    )

    def option(name: str, metavar: str, **kwargs: Any) -> None:
        field = fields[name]
        default = field.get_default(call_default_factory=True)
        help_text = field.description or ""
        if "default:" not in help_text:
            help_text += f" (default: {default})"
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar=metavar, help=help_text, **kwargs)

    option("host", "ADDR")
    option("http_port", "PORT", type=int)
    option("grpc_port", "PORT", type=int)
    option("model_repository", "PATH", type=Path)
    option("load", "MODEL[:VERSIONS]", action="append")
    option("fault_error_rate", "FLOAT", type=float)
    option("fault_delay_ms", "FLOAT", type=float)
    option("fault_throttle_s", "SECONDS", type=int)
    option("fault_batch_delay_ms", "FLOAT", type=float)
    option("fault_step_delay_ms", "FLOAT", type=float)
    option("fault_seed", "INT", type=int)
    option("drain_timeout_s", "SECONDS", type=float)
    option("intra_op_threads", "N", type=int)
    option("max_queue_size", "N", type=int)
    option("max_request_bytes", "BYTES", type=int)
    option("max_generate_request_bytes", "BYTES", type=int)
    option("engine_cache_dir", "PATH", type=Path)
    option("log_level", "LEVEL", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    option("otlp_endpoint", "HOST:PORT")
    option("trace_service_name", "NAME")
    option("model_control_mode", "MODE", choices=["none", "explicit"])
    option("model_control_token", "TOKEN")
    return parser


async def _load_models(repository: ModelRepository, generative: GenerativeModels, settings: BackendSettings) -> None:
    generative_names = set(generative.names_on_disk())
    specs = settings.load_specs() or [(name, None) for name in repository.names_on_disk() + sorted(generative_names)]
    if not specs:
        raise ValueError(
            f"no models in repository {settings.model_repository}; create them with: python -m inference.gen_models --out {settings.model_repository}"
        )
    for name, versions in specs:
        if name not in generative_names:
            await repository.load(name, versions)
        elif versions is not None:
            raise ValueError(f"--load {name}: a generative model serves its highest version; name no versions")
        else:
            await generative.load(name)


async def serve(settings: BackendSettings) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    providers = await loop.run_in_executor(None, usable_providers)
    log.info("ONNX Runtime execution providers, best first: %s", ", ".join(providers))
    runtime = RuntimeOptions(providers=providers, intra_op_threads=settings.intra_op_threads, engine_cache_dir=settings.engine_cache_dir)
    repository = ModelRepository(settings.model_repository, runtime, settings.max_queue_size,
                                 batch_delay_s=settings.fault_batch_delay_ms / 1000)
    faults = Faults(error_rate=settings.fault_error_rate, delay_s=settings.fault_delay_ms / 1000,
                    throttle_s=settings.fault_throttle_s)
    if faults.active:
        log.warning(
            "FAULT INJECTION ON: failing %.1f%% of infer requests, delaying each by %.1f ms, throttling (429) for %d s",
            faults.error_rate * 100, settings.fault_delay_ms, faults.throttle_s,
        )
    if settings.fault_batch_delay_ms:
        log.warning("FAULT INJECTION ON: delaying every model run by %.1f ms", settings.fault_batch_delay_ms)
    if settings.fault_step_delay_ms:
        log.warning("FAULT INJECTION ON: delaying every generation step by %.1f ms", settings.fault_step_delay_ms)
    generative = GenerativeModels(
        settings.model_repository, providers, settings.intra_op_threads or cpu_count(), step_delay_s=settings.fault_step_delay_ms / 1000
    )
    service = InferenceService(repository, faults, seed=settings.fault_seed, generative=generative)

    tracing.configure(settings.otlp_endpoint, settings.trace_service_name)
    model_control = ModelControl(settings.model_control_mode, settings.model_control_token)
    if model_control.enabled:
        log.warning("model control on: the repository index, load and unload answer callers with the model-control token")
    app = create_app(service, settings.max_request_bytes, GenerationService(generative), settings.max_generate_request_bytes,
                     model_control)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE_S)
    await runner.setup()
    grpc_server: grpc.aio.Server | None = None
    try:
        # Listen before loading so liveness answers (and readiness says 503) while models warm.
        try:
            await web.TCPSite(runner, settings.host, settings.http_port).start()
        except OSError as error:
            log.error("cannot listen for HTTP on %s:%d: %s", settings.host, settings.http_port, error)
            return 1
        log.info("HTTP listening on %s", ", ".join(f"{a[0]}:{a[1]}" for a in runner.addresses))
        if settings.grpc_port:
            # Imported only here: the gRPC stubs come from tritonclient, which HTTP-only use need not install.
            from inference.grpc_server import start_grpc_server

            try:
                grpc_server, bound = await start_grpc_server(
                    service, settings.host, settings.grpc_port, settings.max_request_bytes, model_control)
            except RuntimeError as error:  # grpcio's way of saying the port cannot be bound
                log.error("cannot listen for gRPC on %s:%d: %s", settings.host, settings.grpc_port, error)
                return 1
            log.info("gRPC listening on %s:%d", settings.host, bound)

        loading = asyncio.ensure_future(_load_models(repository, generative, settings))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([loading, stopping], return_when=asyncio.FIRST_COMPLETED)
        if loading.done() and loading.exception() is not None:
            log.error("loading models failed: %s", loading.exception())
            stopping.cancel()
            return 1
        if not loading.done():
            log.info("stopped while loading models")
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            return 0
        service.started = True
        names = [f"{mv.name}:{mv.version}" for mv in repository.loaded()] + [e.config.name for e in generative.loaded()]
        log.info("ready: %s", ", ".join(names))

        await stopping
        stop.clear()
        service.start_draining()
        log.info("draining: readiness is 503, waiting up to %.1f s for %d in-flight request(s)", settings.drain_timeout_s, service.in_flight.count)
        idle = asyncio.ensure_future(service.in_flight.wait_idle(settings.drain_timeout_s))
        again = asyncio.ensure_future(stop.wait())  # a second signal skips the wait
        await asyncio.wait([idle, again], return_when=asyncio.FIRST_COMPLETED)
        again.cancel()
        if not (idle.done() and idle.result()):
            idle.cancel()
            log.warning("exiting with %d request(s) still in flight", service.in_flight.count)
        return 0
    finally:
        if grpc_server is not None:
            await grpc_server.stop(_SHUTDOWN_GRACE_S)
        await runner.cleanup()
        await generative.close()
        await repository.close()
        tracing.shutdown()  # what is queued still goes out
        log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = BackendSettings(**vars(args))
    except ValidationError as error:
        parser.error("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()))
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
