"""Geo tables for tests and benchmarks: synthetic prefix sets of any size (seeded), and the
longest-prefix match done the slow, obvious way to check the filter against."""

from __future__ import annotations

import ipaddress
import random

from controlplane.geo.table import GeoTable, Label, Network, Row, canonical

# A few countries per region, as a real table has them.
COUNTRIES = {
    "eu": ["DE", "FR", "NL", "IE", "SE", "PL", "IT", "ES"],
    "us": ["US", "CA", "MX"],
    "ap": ["JP", "SG", "AU", "IN", "KR"],
    "sa": ["BR", "AR", "CL"],
    "af": ["ZA", "NG", "KE"],
}
LABELS = [Label(country, region) for region, countries in COUNTRIES.items() for country in countries]


def synthetic_rows(count: int, *, seed: int = 1, v6_share: float = 0.2) -> list[Row]:
    """`count` distinct prefixes, nested and adjacent ones included (random lengths overlap)."""
    rng = random.Random(seed)
    seen: set[tuple[int, int, int]] = set()
    rows: list[Row] = []
    while len(rows) < count:
        if rng.random() < v6_share:
            version, bits = 6, 128
            length = rng.choice((20, 24, 28, 29, 32, 32, 36, 40, 44, 48, 48, 48, 56, 64, 128))
            address = (0x2000 << 112 | rng.getrandbits(125)) >> (bits - length) << (bits - length)
        else:
            version, bits = 4, 32
            length = rng.choice((8, 12, 14, 16, 17, 18, 19, 20, 21, 22, 22, 23, 24, 24, 24, 24, 32))
            address = rng.getrandbits(32) >> (bits - length) << (bits - length)
        if (version, address, length) in seen:
            continue
        seen.add((version, address, length))
        network = (ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network)((address, length))
        rows.append(Row(network, rng.choice(LABELS), f"row {len(rows)}"))
    return rows


def table_of(rows: list[tuple[str, str, str]]) -> GeoTable:
    """(cidr, country, region) rows as a table."""
    return GeoTable.build(Row(ipaddress.ip_network(c), Label(country, region), f"row {i}")
                          for i, (c, country, region) in enumerate(rows))


def longest_match(rows: list[Row], address: str) -> Label | None:
    """The reference: the label of the longest prefix holding `address`, IPv4-mapped as IPv4."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    best: tuple[int, Label] | None = None
    for row in rows:
        network: Network = canonical(row.network)
        if network.version == ip.version and ip in network and (best is None or network.prefixlen > best[0]):
            best = (network.prefixlen, row.label)
    return None if best is None else best[1]


def sample_addresses(rows: list[Row], count: int, *, seed: int = 2) -> list[str]:
    """Addresses inside, at the edges of, and just outside the prefixes, plus random ones."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < count:
        network = canonical(rng.choice(rows).network)
        top = (1 << network.max_prefixlen) - 1
        pick = rng.randrange(4)
        value = int(network.network_address)
        if pick == 1:
            value = int(network.broadcast_address)
        elif pick == 2:
            value = min(int(network.broadcast_address) + 1, top)
        elif pick == 3:
            value = rng.getrandbits(network.max_prefixlen)
        out.append(str(ipaddress.ip_address(value) if network.version == 6 else ipaddress.IPv4Address(value)))
    return out
