"""A minimal MaxMind DB writer (format 2.0, from the public specification), so tests build their
own .mmdb files instead of downloading one: an IPv6 tree with 24-bit records, IPv4 networks in
::/96 and ::ffff:0:0/96 aliased to them (the layout of MaxMind's GeoLite2 databases), maps,
strings, unsigned integers, arrays and booleans in the data section.

Nested networks are allowed: the longer one wins inside the shorter, as in a real database
(the shorter network's record is pushed down to the branches the longer one does not cover).
"""

from __future__ import annotations

import ipaddress
import json
import struct
import time
from dataclasses import dataclass
from typing import Any

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
RECORD_BITS = 24

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Uint:
    """An unsigned integer of a given width: metadata fields have fixed types, which strict
    readers (libmaxminddb, behind maxminddb's C extension) check."""

    bits: int
    value: int


_UINT_TYPES = {16: 5, 32: 6, 64: 9, 128: 10}


class _Data:
    """A record in the data section."""

    def __init__(self, offset: int) -> None:
        self.offset = offset


def _control(kind: int, size: int) -> bytes:
    """Control byte(s): type in the top 3 bits (0 = extended: the next byte holds type - 7) and
    the payload size in the low 5 bits, extended as the spec says from 29 up."""
    if size < 29:
        head, extra = size, b""
    elif size < 29 + 256:
        head, extra = 29, bytes([size - 29])
    elif size < 285 + 65536:
        head, extra = 30, (size - 285).to_bytes(2, "big")
    else:
        head, extra = 31, (size - 65821).to_bytes(3, "big")
    if kind <= 7:
        return bytes([kind << 5 | head]) + extra
    return bytes([head, kind - 7]) + extra


def encode(value: Any) -> bytes:
    if isinstance(value, bool):
        return _control(14, int(value))
    if isinstance(value, str):
        raw = value.encode()
        return _control(2, len(raw)) + raw
    if isinstance(value, float):
        return _control(3, 8) + struct.pack(">d", value)
    if isinstance(value, int):
        return encode(Uint(next(b for b in (16, 32, 64, 128) if value < 1 << b), value))
    if isinstance(value, Uint):
        assert 0 <= value.value < 1 << value.bits
        raw = value.value.to_bytes((value.value.bit_length() + 7) // 8, "big")
        return _control(_UINT_TYPES[value.bits], len(raw)) + raw
    if isinstance(value, dict):
        return _control(7, len(value)) + b"".join(encode(str(k)) + encode(v) for k, v in value.items())
    if isinstance(value, list):
        return _control(11, len(value)) + b"".join(encode(v) for v in value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def _bits(network: Network) -> tuple[int, int]:
    """The network as (128-bit address, prefix length) in the IPv6 tree: IPv4 lives in ::/96."""
    if network.version == 4:
        return int(network.network_address), network.prefixlen + 96
    return int(network.network_address), network.prefixlen


def write_mmdb(networks: list[tuple[Network, dict[str, Any]]], *, database_type: str = "GeoLite2-Country") -> bytes:
    data = bytearray()
    offsets: dict[str, _Data] = {}
    # Nodes are [left, right]; a child is None (no data), an int (node index) or a _Data.
    nodes: list[list[Any]] = [[None, None]]

    def data_of(record: dict[str, Any]) -> _Data:
        key = json.dumps(record, sort_keys=True)
        if key not in offsets:
            offsets[key] = _Data(len(data))
            data.extend(encode(record))
        return offsets[key]

    def new_node(child: Any = None) -> int:
        nodes.append([child, child])
        return len(nodes) - 1

    # Shorter networks first: a longer one then splits the record it lands in.
    for network, record in sorted(networks, key=lambda item: _bits(item[0])[1]):
        address, length = _bits(network)
        assert length > 0, "a /0 network has no record slot in the tree"
        node = 0
        for depth in range(length - 1):
            bit = address >> (127 - depth) & 1
            child = nodes[node][bit]
            if not isinstance(child, int):  # empty, or a shorter network's record: split it
                nodes[node][bit] = new_node(child)
            node = nodes[node][bit]
        nodes[node][address >> (128 - length) & 1] = data_of(record)

    # ::ffff:0:0/96 -> the IPv4 subtree (::/96), as MaxMind does for IPv4-mapped addresses.
    ipv4_root, node = 0, 0
    for _ in range(96):
        if not isinstance(nodes[ipv4_root][0], int):
            break
        ipv4_root = nodes[ipv4_root][0]
    else:
        mapped = 0xFFFF << 32
        for depth in range(95):
            bit = mapped >> (127 - depth) & 1
            if not isinstance(nodes[node][bit], int):
                nodes[node][bit] = new_node(nodes[node][bit])
            node = nodes[node][bit]
        nodes[node][1] = ipv4_root  # bit 95 of ::ffff:0:0 is 1

    count = len(nodes)
    assert count + 16 + len(data) < 1 << RECORD_BITS

    def record_value(child: Any) -> int:
        if child is None:
            return count
        if isinstance(child, _Data):
            return count + 16 + child.offset
        return child

    tree = b"".join(record_value(left).to_bytes(3, "big") + record_value(right).to_bytes(3, "big")
                    for left, right in nodes)
    metadata = {
        "node_count": Uint(32, count),
        "record_size": Uint(16, RECORD_BITS),
        "ip_version": Uint(16, 6),
        "database_type": database_type,
        "languages": ["en"],
        "binary_format_major_version": Uint(16, 2),
        "binary_format_minor_version": Uint(16, 0),
        "build_epoch": Uint(64, int(time.time())),
        "description": {"en": "sluice test database"},
    }
    return tree + b"\0" * 16 + bytes(data) + METADATA_MARKER + encode(metadata)


def country_record(iso_code: str, *, registered_only: bool = False) -> dict[str, Any]:
    """A GeoLite2-Country record (the fields a reader of that layout looks at, and a few more)."""
    country = {"geoname_id": 1000 + sum(map(ord, iso_code)), "iso_code": iso_code, "names": {"en": iso_code}}
    if registered_only:
        return {"registered_country": country}
    return {"continent": {"code": "EU", "geoname_id": 6255148, "names": {"en": "Europe"}},
            "country": country, "registered_country": country}
