"""Tracing as operators declare it: one `Telemetry` object, named `telemetry`.

With it, the edge and sidecar Envoys trace with Envoy's own OpenTelemetry tracer and export
spans over OTLP/gRPC to the collector named here; the backend continues each sampled trace
(W3C `traceparent`) and exports to the collector its own settings name.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import Field, StringConstraints, field_validator

from controlplane.policy.model import Strict

TELEMETRY_NAME = "telemetry"

HostOrIp = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.:-]{1,253}$")]


class Collector(Strict):
    """An OTLP/gRPC collector (OpenTelemetry Collector, Jaeger, Tempo: port 4317 by convention)."""

    address: Annotated[HostOrIp, Field(
        description="an IP address, or a host name Envoy resolves (DNS) itself")]
    port: Annotated[int, Field(ge=1, le=65535)] = 4317
    timeout_s: Annotated[float, Field(gt=0, le=60, description="per export call")] = 2.0

    @field_validator("address")
    @classmethod
    def _address(cls, address: str) -> str:
        if ":" in address:  # only IPv6 literals may hold a colon
            try:
                ipaddress.IPv6Address(address)
            except ValueError:
                raise ValueError(f"{address!r} is neither a host name nor an IP address") from None
        return address

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            return False
        return True


class Telemetry(Strict):
    """Tracing for the whole mesh. One object, named `telemetry`.

    The edge decides: it samples `sampling_percent` of the requests it receives (a client's
    `x-client-trace-id` is honoured at the same rate, so clients cannot raise it); the sidecars and backends
    follow the edge's decision carried in `traceparent`, so a trace is whole or absent.
    """

    sampling_percent: Annotated[float, Field(
        ge=0, le=100, description="share of requests the edge traces; 0: none (tracing stays configured)")] = 1.0
    collector: Collector
    max_path_tag_length: Annotated[int, Field(
        ge=16, le=4096, description="longest URL kept in a span's http.url tag")] = 256
