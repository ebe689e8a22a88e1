"""Geo tables for tests and benchmarks: synthetic prefix sets of any size (seeded), and the
longest-prefix match done the slow, obvious way to check the filter against."""

from __future__ import annotations

import ipaddress
import random

from controlplane.geotable.table import GeoTable, Label, Network, Row, canonical

# A few countries per region, as a real table has them.
COUNTRIES = {
    "eu": ["DE", "FR", "NL", "IE", "SE", "PL", "IT", "ES"],
    "us": ["US", "CA", "MX"],
    "ap": ["JP", "SG", "AU", "IN", "KR"],
    "sa": ["BR", "AR", "CL"],
    "af": ["ZA", "NG", "KE"],
}
LABELS = [Label(country, region) for region, countries in COUNTRIES.items() for country in countries]


def synthetic_rows(count: int, *, seed: int = 1, v6_share: float = 0.2, nested_share: float = 0.05) -> list[Row]:
    """`count` distinct prefixes shaped like a country table: mostly disjoint blocks spread over
    each family's space (IPv4 /17../24 and a few /32, IPv6 /24../48, /64 and /128), plus
    `nested_share` of them inside another one with another label (longest-prefix cases)."""
    rng = random.Random(seed)
    nested = round(count * nested_share)
    outer = count - nested
    v4_outer = outer - round(outer * v6_share)
    blocks = _disjoint(rng, 32, v4_outer, (17, 18, 19, 20, 21, 22, 22, 23, 23, 24, 24, 24, 24, 24, 32)) + \
        _disjoint(rng, 128, outer - v4_outer, (24, 29, 32, 32, 36, 40, 44, 48, 48, 48, 64, 128))
    rows = [Row(network, rng.choice(LABELS), f"row {i}") for i, network in enumerate(blocks)]
    seen = {row.network for row in rows}
    while len(rows) < count:
        parent = rows[rng.randrange(outer)].network
        if parent.prefixlen == parent.max_prefixlen:
            continue
        length = rng.randrange(parent.prefixlen + 1, parent.max_prefixlen + 1)
        host_bits = parent.max_prefixlen - length
        offset = rng.randrange(parent.num_addresses) >> host_bits << host_bits
        network = ipaddress.ip_network((int(parent.network_address) + offset, length))
        if network not in seen:
            seen.add(network)
            rows.append(Row(network, rng.choice(LABELS), f"row {len(rows)}"))
    return rows


def _disjoint(rng: random.Random, bits: int, count: int, lengths: tuple[int, ...]) -> list[Network]:
    """`count` disjoint prefixes in ascending order with random gaps, spread over the space
    (IPv6 over 2000::/3, where global unicast lives)."""
    kind = ipaddress.IPv4Network if bits == 32 else ipaddress.IPv6Network
    start, end = (0, 1 << 32) if bits == 32 else (1 << 125, 1 << 126)
    mean_size = sum(1 << (bits - n) for n in lengths) / len(lengths)
    cursor, out = start, []
    for i in range(count):
        length = rng.choice(lengths)
        size = 1 << (bits - length)
        cursor = -(-cursor // size) * size  # aligned: a prefix starts on its own boundary
        out.append(kind((cursor, length)))
        room = (end - cursor) // max(count - i, 1)
        cursor += size + rng.randrange(max(1, int(room - 1.5 * mean_size)))
    assert cursor <= end, "the lengths do not fit the space"
    return out


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
