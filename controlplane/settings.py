"""All control-plane configuration, in one object: flags override SLUICE_* environment variables."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ControlPlaneSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICE_", frozen=True)

    xds_host: str = "127.0.0.1"
    xds_port: int = Field(18000, ge=0, le=65535)
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(8080, ge=0, le=65535)
    store: str = Field("sqlite:///var/sluice.db", description="sqlite:///PATH (one replica) or redis://HOST:PORT/DB")
    # Where an edge proxy listens when its bootstrap does not say (node metadata listen_address/port).
    edge_listen_address: str = "127.0.0.1"
    edge_listen_port: int = Field(10000, ge=1, le=65535)
    filters_dir: Path = Field(Path("build/filters/bin"), description="compiled WASM filters, as Envoy reads them")
    push_quiet_s: float = Field(0.05, ge=0, description="a write this long after the last push goes out at once; "
                                "the rest of a burst is pushed once writes pause this long")
    push_max_delay_s: float = Field(0.25, ge=0, description="...but never later than this after the first write")
    quota_interval_s: float = Field(1.0, gt=0, description="how often global rate-limit shares are rebalanced")
    usage_interval_s: float = Field(10.0, gt=0, le=3600, description="how often day and month token budgets are "
                                    "counted from the edges and re-split (a crash loses at most this much usage)")
    clock_file: Path | None = Field(None, description="tests only: the time for token budget windows, in Unix "
                                    "seconds, is read from this file; unset: the system clock")
    log_level: str = "INFO"
    # The shadow comparator (controlplane/shadow/): Envoy mirrors canaries' shadow traffic to it.
    shadow_host: str = Field("127.0.0.1", description="the comparator listens here (an IP address: EDS takes no names)")
    shadow_port: int = Field(0, ge=0, le=65535, description="the comparator's port; 0: any free port (the "
                             "controller writes the one it got into the mirror's Backend)")
    shadow_advertise: str | None = Field(None, description="IP:PORT at which Envoys reach the comparator, when not "
                                         "shadow_host:shadow_port (behind NAT, in a container)")
    shadow_max_inflight: int = Field(64, ge=1, le=10_000, description="comparisons at once; more are dropped, counted")
    shadow_max_body_bytes: int = Field(4 << 20, ge=1024, description="larger mirrored requests are dropped, counted")
    shadow_timeout_s: float = Field(30.0, gt=0, le=3600, description="per backend answer to a mirrored request")

    replica_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
                            description="this replica's name in leases and logs")
    store_poll_s: float = Field(0.5, gt=0, le=10, description="how often a Redis replica checks for revisions "
                                "and tokens it was not told about (bounds the cost of a lost notification)")
    lease_ttl_s: float = Field(3.0, ge=0.5, le=60, description="a dead lease holder is replaced within about this")
    auth: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: bearer tokens are required once one exists (before that, loopback only)")
    tls_cert: Path | None = Field(None, description="PEM certificate: HTTPS admin API and TLS xDS")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    client_ca: Path | None = Field(None, description="PEM CA: xDS clients (Envoys) must present a certificate it signed")

    def shadow_advertised(self) -> tuple[str, int] | None:
        """shadow_advertise as (IP, port); None when unset."""
        if self.shadow_advertise is None:
            return None
        host, _, port = self.shadow_advertise.rpartition(":")
        return host.strip("[]"), int(port)

    @model_validator(mode="after")
    def _shadow_advertise_is_ip_port(self) -> ControlPlaneSettings:
        if self.shadow_advertise is not None:
            try:
                host, port = self.shadow_advertised() or ("", 0)
                ipaddress.ip_address(host)
                if not 1 <= port <= 65535:
                    raise ValueError
            except ValueError:
                raise ValueError(f"shadow_advertise {self.shadow_advertise!r} is not IP:PORT "
                                 "(Envoy takes only IP addresses in EDS endpoints)") from None
        return self

    @model_validator(mode="after")
    def _tls_complete(self) -> ControlPlaneSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both tls_cert and tls_key, or neither")
        if self.client_ca is not None and self.tls_cert is None:
            raise ValueError("client_ca (mutual TLS for xDS) needs tls_cert and tls_key")
        return self
