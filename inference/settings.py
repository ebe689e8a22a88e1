"""Every setting of the backend process, from the command line or SLUICE_BACKEND_* variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SLUICE_BACKEND_"


def parse_load_spec(spec: str) -> tuple[str, list[int] | None]:
    """"classifier" -> ("classifier", None); "classifier:1,2" -> ("classifier", [1, 2])."""
    name, sep, versions = spec.partition(":")
    if not name:
        raise ValueError(f"--load {spec!r}: expected MODEL or MODEL:VERSION[,VERSION...]")
    if not sep:
        return name, None
    try:
        numbers = [int(v) for v in versions.split(",")]
    except ValueError:
        raise ValueError(f"--load {spec!r}: versions must be positive integers separated by commas") from None
    if not numbers or any(n < 1 for n in numbers):
        raise ValueError(f"--load {spec!r}: versions must be positive integers separated by commas")
    return name, numbers


class BackendSettings(BaseSettings):
    # protected_namespaces=(): `model_repository` is our field, not pydantic's `model_` API.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, protected_namespaces=())

    host: str = Field("127.0.0.1", description="address to listen on")
    http_port: Annotated[int, Field(ge=0, le=65535, description="HTTP (KServe v2 REST) port")] = 8001
    grpc_port: Annotated[int, Field(ge=0, le=65535, description="gRPC (KServe v2) port; 0 = no gRPC")] = 0
    model_repository: Path = Field(Path("models"), description="directory of <model>/config.yaml and <model>/<version>/model.onnx")
    load: list[str] = Field(
        default_factory=list,
        description="MODEL[:VERSIONS] to load, repeatable (classifier:1 or classifier:1,2); default: every model with its version policy",
    )
    fault_error_rate: Annotated[float, Field(ge=0, le=1, description="fraction of infer requests failed with HTTP 500 on purpose")] = 0.0
    fault_delay_ms: Annotated[float, Field(ge=0, description="delay added to every infer request on purpose, in ms")] = 0.0
    fault_throttle_s: Annotated[int, Field(
        ge=0, le=3600, description="answer every infer request 429 with this Retry-After on purpose, in s; 0: off")] = 0
    fault_batch_delay_ms: Annotated[float, Field(
        ge=0, description="delay added to every model run (batch) on purpose, in ms: the model instance is held, so capacity drops")] = 0.0
    fault_step_delay_ms: Annotated[float, Field(ge=0, description="delay added to every generation engine step on purpose, in ms")] = 0.0
    fault_seed: int | None = Field(None, description="seed for --fault-error-rate, for repeatable runs")
    drain_timeout_s: Annotated[float, Field(gt=0, description="on SIGTERM, how long in-flight requests may take to finish")] = 10.0
    intra_op_threads: Annotated[int | None, Field(ge=1, description="ORT threads per session; default: cores / instances")] = None
    max_queue_size: Annotated[int, Field(ge=1, description="queue bound for models whose config sets none")] = 1024
    max_request_bytes: Annotated[int, Field(ge=1024, description="largest request body accepted")] = 64 * 1024 * 1024
    max_generate_request_bytes: Annotated[
        int, Field(ge=1024, description="largest body accepted by the OpenAI and generate endpoints (413 above)")
    ] = 8 * 1024 * 1024
    engine_cache_dir: Path = Field(Path("var/engine-cache"), description="where TensorRT keeps built engines")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    otlp_endpoint: str | None = Field(
        None, description="HOST:PORT of an OTLP/gRPC collector: continue sampled W3C traces and export spans there")
    trace_service_name: str = Field("sluice-backend", description="service.name of the spans this backend exports")
    # Off by default, as Triton's --model-control-mode=none: whoever reaches the port (through the
    # edge, say) must not be able to unload what serves everyone.
    model_control_mode: Literal["none", "explicit"] = Field(
        "none", description="none: the repository index, load and unload are refused; explicit: allowed with --model-control-token")
    model_control_token: SecretStr | None = Field(
        None, description="bearer token the repository index, load and unload require (needed with --model-control-mode explicit)")

    @field_validator("load")
    @classmethod
    def _valid_specs(cls, specs: list[str]) -> list[str]:
        for spec in specs:
            parse_load_spec(spec)
        return specs

    @model_validator(mode="after")
    def _explicit_needs_a_token(self) -> BackendSettings:
        if self.model_control_mode == "explicit" and not (self.model_control_token and self.model_control_token.get_secret_value()):
            raise ValueError("--model-control-mode explicit needs --model-control-token (or SLUICE_BACKEND_MODEL_CONTROL_TOKEN)")
        return self

    def load_specs(self) -> list[tuple[str, list[int] | None]]:
        return [parse_load_spec(spec) for spec in self.load]
