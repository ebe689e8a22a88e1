"""Geo tables from CSV and MaxMind DB files (built here by tests/mmdb_writer.py), the stored blob,
and the filter configuration written from it."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from geo_data import synthetic_rows, table_of
from mmdb_writer import country_record, write_mmdb

from controlplane.geo.imports import from_csv, from_mmdb, imported
from controlplane.geotable.compact import Settings, filter_config, table_id
from controlplane.geotable.table import GeoTable, Label, Row, TableError


def labels_by_network(table: GeoTable) -> dict[str, Label]:
    """The table's prefixes back from its arrays: network -> label."""
    out: dict[str, Label] = {}
    v4, v6 = table.v4_count, table.v6_count
    arrays = table.arrays
    v4_labels = 5 * v4 + (5 * v4) % 2
    for i in range(v4):
        (address,) = struct.unpack_from("<I", arrays, 4 * i)
        (label,) = struct.unpack_from("<H", arrays, v4_labels + 2 * i)
        out[str(ipaddress.IPv4Network((address, arrays[4 * v4 + i])))] = table.labels[label]
    v6_start = v4_labels + 2 * v4 + (-(v4_labels + 2 * v4) % 16)
    v6_labels = v6_start + 17 * v6 + (17 * v6) % 2
    for i in range(v6):
        address = int.from_bytes(arrays[v6_start + 16 * i:v6_start + 16 * i + 16], "little")
        (label,) = struct.unpack_from("<H", arrays, v6_labels + 2 * i)
        out[str(ipaddress.IPv6Network((address, arrays[v6_start + 16 * v6 + i])))] = table.labels[label]
    return out


def test_csv_rows_become_sorted_prefixes_with_labels() -> None:
    table = from_csv("cidr,country,region\n"
                     "# a comment\n"
                     "203.0.113.0/24,US,us\n"
                     "\n"
                     "198.51.100.0/24,DE,\n"
                     "2001:db8::/32,,ap\n"
                     "::ffff:192.0.2.0/120,NL,eu\n"  # IPv4-mapped: stored as 192.0.2.0/24
                     "198.51.100.0/24,DE,\n")  # a repeated identical row is harmless
    assert (table.v4_count, table.v6_count) == (3, 1)
    assert labels_by_network(table) == {
        "192.0.2.0/24": Label("NL", "eu"),
        "198.51.100.0/24": Label("DE", ""),
        "203.0.113.0/24": Label("US", "us"),
        "2001:db8::/32": Label("", "ap"),
    }
    assert list(labels_by_network(table))[:3] == ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]


def test_bad_csv_rows_are_all_reported_with_their_line_numbers() -> None:
    text = ("cidr,country,region\n"
            "198.51.100.0/24,DE,eu\n"
            "10.0.0.1/8,FR,eu\n"
            "300.0.0.0/8,FR,eu\n"
            "192.0.2.0/24,de,eu\n"
            "192.0.3.0/24,DE,EU\n"
            "192.0.4.0/24,,\n"
            "192.0.5.0/24,DE\n"
            "198.51.100.0/24,FR,eu\n")
    with pytest.raises(TableError) as caught:
        from_csv(text)
    problems = caught.value.problems
    assert [where for where, _ in problems] == [f"line {n}" for n in range(3, 10)]
    messages = dict(problems)
    assert "zero host bits (the prefix is 10.0.0.0/8)" in messages["line 3"]
    assert "'300.0.0.0/8' is not a CIDR prefix" in messages["line 4"]
    assert "country 'de'" in messages["line 5"]
    assert "region 'EU'" in messages["line 6"]
    assert "neither a country nor a region" in messages["line 7"]
    assert "expected 3 columns" in messages["line 8"]
    assert "also at line 2" in messages["line 9"]


def test_csv_problem_lists_are_capped() -> None:
    with pytest.raises(TableError) as caught:
        from_csv("".join(f"10.0.0.{i}/8,DE,eu\n" for i in range(1, 200)))
    assert len(caught.value.problems) == 101
    assert caught.value.problems[-1] == ("file", "and 99 more problems")


def test_non_utf8_and_empty_csv_are_refused() -> None:
    with pytest.raises(TableError, match="not UTF-8"):
        imported(b"\xff\xfe10.0.0.0/8", "csv")
    with pytest.raises(TableError, match="no rows"):
        from_csv("cidr,country,region\n")


def test_mmdb_networks_keep_their_country_nested_ones_included() -> None:
    database = write_mmdb([
        (ipaddress.ip_network("198.51.100.0/24"), country_record("DE")),
        (ipaddress.ip_network("198.51.100.128/25"), country_record("NL")),  # nested: splits the /24
        (ipaddress.ip_network("203.0.113.0/24"), country_record("US", registered_only=True)),
        (ipaddress.ip_network("192.0.2.0/24"), {"continent": {"code": "AN"}}),  # no country: left out
        (ipaddress.ip_network("2001:db8::/32"), country_record("JP")),
    ])
    table = from_mmdb(database)
    assert labels_by_network(table) == {
        "198.51.100.0/25": Label("DE", ""),
        "198.51.100.128/25": Label("NL", ""),
        "203.0.113.0/24": Label("US", ""),
        "2001:db8::/32": Label("JP", ""),
    }  # and nothing twice through the ::ffff:0:0/96 alias


def test_a_file_that_is_not_a_maxmind_db_is_refused() -> None:
    with pytest.raises(TableError, match="not a MaxMind DB"):
        from_mmdb(b"cidr,country,region\n10.0.0.0/8,DE,eu\n")
    with pytest.raises(TableError, match="no network with a country"):
        from_mmdb(write_mmdb([(ipaddress.ip_network("10.0.0.0/8"), {"continent": {"code": "EU"}})]))


def test_blob_round_trip_and_content_address() -> None:
    table = GeoTable.build(synthetic_rows(2000, seed=4))
    blob = table.encode()
    assert GeoTable.decode(blob) == table
    assert table.digest == GeoTable.build(reversed(synthetic_rows(2000, seed=4))).digest  # order-free
    with pytest.raises(ValueError):
        GeoTable.decode(blob[:-1])


def test_filter_config_resolves_regions_and_carries_the_arrays_unchanged() -> None:
    table = table_of([("198.51.100.0/24", "DE", ""), ("203.0.113.0/24", "US", "us"), ("192.0.2.0/24", "BR", "")])
    settings = Settings(default_region="other", countries=(("DE", "eu"),), xff_trusted_hops=2)
    config = filter_config(table, settings, table.digest)
    magic, version, hops, v4, v6, labels, *_ = struct.unpack_from("<4sHHIIHBBB3xI4x", config)
    assert (magic, version, hops, v4, v6, labels) == (b"SGEO", 1, 2, 3, 0, 3)
    assert struct.unpack_from("<I", config, 24)[0] == table_id(table.digest)
    assert config.endswith(table.arrays) and (len(config) - len(table.arrays)) % 16 == 0
    # Labels sorted (BR, DE, US) with regions resolved: default, mapped, as written.
    assert b"\x02\x05BRother\x02\x02DEeu\x02\x02USus" in config


def test_limits() -> None:
    with pytest.raises(TableError, match="distinct country/region pairs"):
        GeoTable.build(Row(ipaddress.ip_network(f"10.{i // 256}.{i % 256}.0/24"), Label("DE", f"r{i}"), f"row {i}")
                       for i in range(1025))
