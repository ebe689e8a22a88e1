"""The georoute filter's plugin configuration (filters/georoute/config.zig): a 32-byte header,
the header names, the default region, the labels with every region resolved, then the table's
prefix arrays unchanged. Bytes, not JSON: the filter reads the arrays in place."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from controlplane.geotable.table import ALIGNMENT, GeoTable, encode_labels
from controlplane.policy import Policy
from controlplane.policy.geo import Geo

MAGIC = b"SGEO"
VERSION = 1
_HEADER = struct.Struct("<4sHHIIHBBB3xI4x")


@dataclass(frozen=True)
class Settings:
    """What the filter needs besides the table (hashable: configurations are cached by it)."""

    country_header: str = "x-sluice-country"
    region_header: str = "x-sluice-region"
    default_region: str = "default"
    countries: tuple[tuple[str, str], ...] = ()  # (country, region), for labels without a region
    xff_trusted_hops: int = 0

    def region_of(self, country: str, region: str) -> str:
        return region or dict(self.countries).get(country, self.default_region)


def settings(policy: Policy, geo: Geo) -> Settings:
    """The filter's settings as the policy's Geo object (and its edge) say."""
    return Settings(country_header=geo.country_header, region_header=geo.region_header,
                    default_region=geo.default_region, countries=tuple(sorted(geo.countries.items())),
                    xff_trusted_hops=policy.edge.xff_trusted_hops)


def table_id(digest: str) -> int:
    """A 32-bit name for the table, reported by the filter as a gauge (exact in Prometheus)."""
    return int(digest.removeprefix("sha256:")[:8], 16)


def filter_config(table: GeoTable, settings: Settings, digest: str) -> bytes:
    names = (settings.country_header.encode(), settings.region_header.encode(), settings.default_region.encode())
    head = _HEADER.pack(MAGIC, VERSION, settings.xff_trusted_hops, table.v4_count, table.v6_count,
                        len(table.labels), *(len(n) for n in names), table_id(digest))
    countries = dict(settings.countries)
    labels = encode_labels((label.country, label.region or countries.get(label.country, settings.default_region))
                           for label in table.labels)
    body = head + b"".join(names) + labels
    return body + b"\0" * (-len(body) % ALIGNMENT) + table.arrays
