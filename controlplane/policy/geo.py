"""Geo routing as operators declare it: how the edge tags each client with a country and region
(`Geo`, one object named `geo`), and which backend serves each region of a route, with the
regions to fail over to (`GeoRoute`)."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import Field, StringConstraints, field_validator, model_validator

from controlplane.policy import filter_limits as limits
from controlplane.policy.model import Name, Strict

COUNTRY_PATTERN = r"^[A-Z]{2}$"
# Region names are Names: DNS labels, so they are valid header values and cluster-name parts.
REGION_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
Country = Annotated[str, StringConstraints(pattern=COUNTRY_PATTERN),
                    Field(description="ISO 3166-1 alpha-2 code, two capital letters")]
# What the filter accepts as a header name (lowercase: Envoy stores header names lowercased).
FilterHeaderName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.-]+$", max_length=limits.GEO_HEADER_NAME_LEN_MAX)]
Digest = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]

# Headers whose meaning the edge depends on: the filter must never replace them.
RESERVED_HEADERS = frozenset({"host", "x-forwarded-for", "content-length", "content-type", "transfer-encoding",
                              "connection", "te", "upgrade", "x-request-id"})
INLINE_PREFIXES_MAX = 1024
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


class GeoPrefix(Strict):
    """One row of an inline table: clients in `cidr` are from `country` and/or `region`."""

    cidr: str
    country: Country | None = None
    region: Name | None = Field(None, description="omitted: from `countries`, else the default region")

    @field_validator("cidr")
    @classmethod
    def _network(cls, cidr: str) -> str:
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise ValueError(f"not a CIDR prefix with zero host bits: {exc}") from None
        # An IPv4-mapped prefix is the IPv4 prefix it maps (as the filter looks clients up), so
        # that the same network written twice is caught as a repeat.
        if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and network.subnet_of(_MAPPED):
            network = ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
        return str(network)

    @model_validator(mode="after")
    def _says_something(self) -> GeoPrefix:
        if self.country is None and self.region is None:
            raise ValueError("name a country, a region, or both")
        return self


class Geo(Strict):
    """How the edge Envoys tag each request with its client's country and region (the georoute
    WASM filter), from the client IP found as for rate limits (Edge.xff_trusted_hops)."""

    country_header: FilterHeaderName = "x-sluice-country"
    region_header: FilterHeaderName = "x-sluice-region"
    default_region: Name = Field(description="the region of clients no prefix holds")
    countries: Annotated[dict[Country, Name], Field(
        max_length=300, description="country -> region, for table rows that name no region (MaxMind imports)")] = {}
    prefixes: Annotated[list[GeoPrefix], Field(
        max_length=INLINE_PREFIXES_MAX, description="a small table written inline")] = []
    table: Digest | None = Field(None, description="an uploaded table (POST /api/v1/geo/table sets it)")

    @model_validator(mode="after")
    def _consistent(self) -> Geo:
        if self.country_header == self.region_header:
            raise ValueError("country_header and region_header must differ")
        for field in ("country_header", "region_header"):
            if getattr(self, field) in RESERVED_HEADERS:
                raise ValueError(f"{field} {getattr(self, field)!r} is a header the edge itself relies on")
        if self.prefixes and self.table is not None:
            raise ValueError("the table is either inline (prefixes) or uploaded (table), not both")
        first: dict[str, int] = {}
        for i, prefix in enumerate(self.prefixes):
            earlier = first.setdefault(prefix.cidr, i)
            if earlier != i:
                raise ValueError(f"prefixes.{i}: {prefix.cidr} is already prefixes.{earlier}")
        return self


class RegionRoute(Strict):
    backend: Name = Field(description="serves the region's clients while it has healthy endpoints")
    fallback: Annotated[list[Name], Field(
        max_length=8, description="regions of this GeoRoute whose backends take over, in order")] = []


class GeoRoute(Strict):
    """Sends a service route's requests to the backend of the client's region; when all of that
    backend's endpoints fail their health checks, to the next region of `fallback` that has
    healthy ones, and back once they recover. Clients of regions not listed keep the route's
    own split."""

    service: Name
    route: Name
    regions: Annotated[dict[Name, RegionRoute], Field(min_length=1, max_length=32)]

    @model_validator(mode="after")
    def _fallbacks_are_regions(self) -> GeoRoute:
        for region, target in self.regions.items():
            if len(set(target.fallback)) != len(target.fallback):
                raise ValueError(f"regions.{region}.fallback names a region more than once")
            for other in target.fallback:
                if other == region:
                    raise ValueError(f"regions.{region}.fallback names the region itself")
                if other not in self.regions:
                    raise ValueError(f"regions.{region}.fallback names {other!r}, which is not in regions")
        return self

    def chain(self, region: str) -> list[str]:
        """The backends a region's clients may reach, in order: its own, then its fallbacks' (a
        backend serving several of them counts once, where it first appears)."""
        target = self.regions[region]
        return list(dict.fromkeys([target.backend, *(self.regions[r].backend for r in target.fallback)]))
