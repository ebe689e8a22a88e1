"""A geo table: CIDR prefixes, each naming a country and/or a region, in the compact form the
georoute filter reads (filters/georoute/config.zig): per address family, the prefixes sorted by
(address, length) in three parallel little-endian arrays (address, length, label index), plus the
distinct labels. The filter turns them into longest-prefix-match ranges itself.

The table is stored as one content-addressed blob (`encode`, `digest`); a label's empty region
is resolved when the filter configuration is written (controlplane/geotable/compact.py), from the Geo
object's country mapping, so changing that mapping needs no new upload.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import struct
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from sys import byteorder
from typing import NamedTuple

from controlplane.policy.geo import COUNTRY_PATTERN, REGION_PATTERN, GeoPrefix

# The filter's bounds (filters/georoute/config.zig).
V4_PREFIXES_MAX = 1 << 20
V6_PREFIXES_MAX = 1 << 19
LABELS_MAX = 1024
ALIGNMENT = 16

COUNTRY = re.compile(COUNTRY_PATTERN)
REGION = re.compile(REGION_PATTERN)

BLOB_MAGIC = b"SGTB"
BLOB_VERSION = 1
_BLOB_HEADER = struct.Struct("<4sHHIIH6x")  # magic, version, 0, v4 count, v6 count, label count

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TableError(ValueError):
    """Every problem found, each as (where, what): where names the source ("line 12")."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        shown = "; ".join(f"{where}: {what}" for where, what in problems[:5])
        super().__init__(shown + (f"; and {len(problems) - 5} more" if len(problems) > 5 else ""))
        self.problems = problems


class Label(NamedTuple):
    """What a prefix says about its clients. An empty country: the country header is removed;
    an empty region: the Geo object's `countries` mapping (or its default region) decides.
    (A tuple: hashed and compared in C, half a million times per import.)"""

    country: str = ""
    region: str = ""

    def problem(self) -> str | None:
        if self.country and not COUNTRY.match(self.country):
            return f"country {self.country!r} is not two capital letters (ISO 3166-1 alpha-2)"
        if self.region and not REGION.match(self.region):
            return f"region {self.region!r} is not a DNS label (lowercase letters, digits, '-', 1-63)"
        if not self.country and not self.region:
            return "names neither a country nor a region"
        return None


@dataclass(frozen=True)
class Row:
    network: Network
    label: Label
    where: str  # for messages: "line 12", "network 1.2.3.0/24"


def canonical(network: Network) -> Network:
    """IPv4-mapped IPv6 prefixes (inside ::ffff:0:0/96) as the IPv4 prefixes they are: the filter
    looks mapped clients up among the IPv4 prefixes."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and network.subnet_of(_MAPPED):
        return ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
    return network


def _key(network: Network) -> tuple[int, int, int]:
    """`canonical(network)` as (version, address, length)."""
    address = int(network.network_address)
    if network.version == 6 and network.prefixlen >= 96 and address >> 32 == 0xFFFF:
        return 4, address & 0xFFFFFFFF, network.prefixlen - 96
    return network.version, address, network.prefixlen


def _padding(offset: int, to: int) -> bytes:
    return b"\0" * (-offset % to)


@dataclass(frozen=True)
class GeoTable:
    labels: tuple[Label, ...]
    v4_count: int
    v6_count: int
    arrays: bytes  # the filter's prefix arrays, laid out from a 16-aligned offset

    @classmethod
    def build(cls, rows: Iterable[Row]) -> GeoTable:
        """Sorted, deduplicated, checked; TableError lists every problem."""
        problems: list[tuple[str, str]] = []
        label_problems: dict[Label, str | None] = {}
        # (version, address, length) -> first row: plain ints hash and sort far faster than
        # ipaddress objects, which matters at 500,000 rows.
        seen: dict[tuple[int, int, int], Row] = {}
        for row in rows:
            if row.label not in label_problems:
                label_problems[row.label] = row.label.problem()
            if (problem := label_problems[row.label]) is not None:
                problems.append((row.where, problem))
                continue
            key = _key(row.network)
            first = seen.setdefault(key, row)
            if first is not row and first.label != row.label:
                problems.append((row.where, f"{canonical(row.network)} is also at {first.where} "
                                            "with another country/region"))
        labels = sorted({row.label for row in seen.values()})
        if len(labels) > LABELS_MAX:
            problems.append(("table", f"{len(labels)} distinct country/region pairs, at most {LABELS_MAX}"))
        v4 = sorted((a, n, r.label) for (v, a, n), r in seen.items() if v == 4)
        v6 = sorted((a, n, r.label) for (v, a, n), r in seen.items() if v == 6)
        if len(v4) > V4_PREFIXES_MAX or len(v6) > V6_PREFIXES_MAX:
            problems.append(("table", f"{len(v4)} IPv4 and {len(v6)} IPv6 prefixes: "
                                      f"at most {V4_PREFIXES_MAX} and {V6_PREFIXES_MAX}"))
        if problems:
            raise TableError(problems)
        index = {label: i for i, label in enumerate(labels)}
        return cls(tuple(labels), len(v4), len(v6), _arrays(v4, v6, index))

    @property
    def prefixes(self) -> int:
        return self.v4_count + self.v6_count

    def encode(self) -> bytes:
        """The blob kept in the store (its digest names the table)."""
        head = _BLOB_HEADER.pack(BLOB_MAGIC, BLOB_VERSION, 0, self.v4_count, self.v6_count, len(self.labels))
        body = head + encode_labels((label.country, label.region) for label in self.labels)
        return body + _padding(len(body), ALIGNMENT) + self.arrays

    @classmethod
    def decode(cls, blob: bytes) -> GeoTable:
        magic, version, _, v4_count, v6_count, label_count = _BLOB_HEADER.unpack_from(blob)
        if magic != BLOB_MAGIC or version != BLOB_VERSION:
            raise ValueError("not a sluice geo table blob")
        offset = _BLOB_HEADER.size
        labels = []
        for _ in range(label_count):
            country_len, region_len = blob[offset], blob[offset + 1]
            offset += 2
            country = blob[offset:offset + country_len].decode()
            region = blob[offset + country_len:offset + country_len + region_len].decode()
            offset += country_len + region_len
            labels.append(Label(country, region))
        offset += -offset % ALIGNMENT
        arrays = blob[offset:]
        if len(arrays) != _layout_end(v4_count, v6_count):
            raise ValueError("geo table blob has the wrong length")
        return cls(tuple(labels), v4_count, v6_count, arrays)

    @property
    def digest(self) -> str:
        return digest_of(self.encode())


@lru_cache(maxsize=4)
def inline_table(prefixes: tuple[GeoPrefix, ...]) -> tuple[GeoTable, str]:
    """The table a Geo object writes inline (its `prefixes`), and its digest."""
    table = GeoTable.build(Row(ipaddress.ip_network(p.cidr), Label(p.country or "", p.region or ""), f"prefixes.{i}")
                           for i, p in enumerate(prefixes))
    return table, table.digest


def digest_of(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def encode_labels(labels: Iterable[tuple[str, str]]) -> bytes:
    out = bytearray()
    for country, region in labels:
        c, r = country.encode(), region.encode()
        out += bytes((len(c), len(r))) + c + r
    return bytes(out)


def _layout_end(v4_count: int, v6_count: int) -> int:
    """config.zig's Layout.of(0, ...).end."""
    v4_labels = v4_count * 5 + (v4_count * 5) % 2
    v6_start = v4_labels + 2 * v4_count
    v6_start += -v6_start % ALIGNMENT
    v6_labels = v6_start + 17 * v6_count
    v6_labels += v6_labels % 2
    return v6_labels + 2 * v6_count


def _little(values: array[int]) -> bytes:
    if byteorder != "little":
        values.byteswap()
    return values.tobytes()


def _arrays(v4: list[tuple[int, int, Label]], v6: list[tuple[int, int, Label]], index: dict[Label, int]) -> bytes:
    out = bytearray()
    out += _little(array("I", (a for a, _, _ in v4)))
    out += bytes(length for _, length, _ in v4)
    out += _padding(len(out), 2)
    out += _little(array("H", (index[label] for _, _, label in v4)))
    out += _padding(len(out), ALIGNMENT)
    out += b"".join(a.to_bytes(16, "little") for a, _, _ in v6)
    out += bytes(length for _, length, _ in v6)
    out += _padding(len(out), 2)
    out += _little(array("H", (index[label] for _, _, label in v6)))
    assert len(out) == _layout_end(len(v4), len(v6))
    return bytes(out)
