"""All control-plane configuration, in one object: flags override SLUICE_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ControlPlaneSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICE_", frozen=True)

    xds_host: str = "127.0.0.1"
    xds_port: int = Field(18000, ge=0, le=65535)
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(8080, ge=0, le=65535)
    store: str = Field("sqlite:///var/sluice.db", description="sqlite:///PATH")
    # Where an edge proxy listens when its bootstrap does not say (node metadata listen_address/port).
    edge_listen_address: str = "127.0.0.1"
    edge_listen_port: int = Field(10000, ge=1, le=65535)
    filters_dir: Path = Field(Path("build/filters/bin"), description="compiled WASM filters, as Envoy reads them")
    push_quiet_s: float = Field(0.05, ge=0, description="a burst of writes is pushed once writes pause this long")
    push_max_delay_s: float = Field(0.25, ge=0, description="...but never later than this after the first write")
    quota_interval_s: float = Field(1.0, gt=0, description="how often global rate-limit shares are rebalanced")
    log_level: str = "INFO"
