"""The compiled georoute.wasm in the wasmtime proxy-wasm host emulator (proxywasm_host.py), fed
configurations written by the control plane's own encoder (controlplane/geo)."""

from __future__ import annotations

import random
import time

from geo_data import longest_match, sample_addresses, synthetic_rows, table_of
from proxywasm_host import CONTINUE, PEER, ProxyWasmHost, forwarded_for, make_host

from controlplane.geotable.compact import Settings, filter_config, table_id
from controlplane.geotable.table import GeoTable

FILTER = "georoute"  # the `wasm` fixture (conftest.py)
ROWS = [
    ("198.51.100.0/24", "DE", "eu"),
    ("198.51.100.128/25", "NL", ""),  # region from the country mapping
    ("198.51.100.7/32", "IE", "eu-west"),
    ("203.0.113.0/24", "US", "us"),
    ("2001:db8::/32", "FR", ""),
    ("2001:db8:1::/48", "", "ap"),  # a region without a country
    ("2001:db8:1::1/128", "JP", "ap"),
]
SETTINGS = Settings(default_region="us", countries=(("FR", "eu"), ("NL", "eu")), xff_trusted_hops=1)


def config_of(table: GeoTable, settings: Settings = SETTINGS) -> bytes:
    return filter_config(table, settings, table.digest)


def tag(host: ProxyWasmHost, client: str | None = None, *, xff: str | None = None, peer: str = PEER,
        extra: list[tuple[str, str]] = ()) -> dict[str, list[str]]:
    """One request behind use_remote_address (Envoy appended the peer); the request headers the
    filter leaves, as name -> values."""
    headers = [("x-forwarded-for", forwarded_for(xff if xff is not None else client, peer)), *extra]
    result = host.http_request(headers, peer=peer, response_headers=None)
    assert result.request_action == CONTINUE and result.local_response is None
    out: dict[str, list[str]] = {}
    for name, value in result.request_headers:
        out.setdefault(name, []).append(value)
    return out


def region_country(headers: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    return headers.get("x-sluice-region", []), headers.get("x-sluice-country", [])


def test_exports_only_the_callbacks_it_needs(wasm):
    host = ProxyWasmHost(wasm)
    functions = {name for name in host.exports if name != "memory"}
    assert functions == {"proxy_abi_version_0_2_1", "proxy_on_memory_allocate", "proxy_on_configure",
                         "proxy_on_request_headers"}


def test_longest_prefix_decides_country_and_region(wasm):
    host = make_host(wasm, config_of(table_of(ROWS)))
    expected = {
        "198.51.100.1": ("eu", "DE"),
        "198.51.100.200": ("eu", "NL"),  # /25 inside the /24; region mapped from NL
        "198.51.100.7": ("eu-west", "IE"),  # /32
        "198.51.100.8": ("eu", "DE"),
        "203.0.113.255": ("us", "US"),
        "2001:db8:ffff::1": ("eu", "FR"),
        "2001:db8:1::2": ("ap", None),  # no country: the header is absent
        "2001:db8:1::1": ("ap", "JP"),  # /128
        "::ffff:198.51.100.7": ("eu-west", "IE"),  # IPv4-mapped is the IPv4 client
        "[2001:db8::5]:443": ("eu", "FR"),  # with a port
        "192.0.2.1": ("us", None),  # unmatched: the default region
        "2001:db9::1": ("us", None),
    }
    for client, (region, country) in expected.items():
        assert region_country(tag(host, client)) == ([region], [country] if country else []), client


def test_client_sent_headers_are_replaced_or_removed(wasm):
    host = make_host(wasm, config_of(table_of(ROWS)))
    forged = [("x-sluice-region", "us"), ("x-sluice-region", "eu"), ("X-Sluice-Country", "ZZ")]
    assert region_country(tag(host, "198.51.100.1", extra=forged)) == (["eu"], ["DE"])
    assert region_country(tag(host, "192.0.2.1", extra=forged)) == (["us"], [])  # unmatched: removed


def test_the_client_is_found_exactly_like_the_rate_limiter(wasm):
    host = make_host(wasm, config_of(table_of(ROWS)))
    # Entries a client adds to the left of what the trusted hop appended change nothing.
    assert region_country(tag(host, xff="203.0.113.5, 198.51.100.1")) == (["eu"], ["DE"])
    # A junk entry is no identity: the peer (the load balancer) is used, unmatched here.
    assert region_country(tag(host, xff="not-an-ip")) == (["us"], [])
    assert region_country(tag(host, xff="198.51.100.1", peer="[2001:db8::9]:5")) == (["eu"], ["DE"])
    # xff_trusted_hops 0: the connection's peer, whatever X-Forwarded-For says.
    peer_only = make_host(wasm, config_of(table_of(ROWS), Settings(default_region="us", xff_trusted_hops=0)))
    assert region_country(tag(peer_only, "198.51.100.1", peer="203.0.113.9:1234")) == (["us"], ["US"])
    assert region_country(tag(peer_only, "203.0.113.9", peer="[2001:db8:1::1]:80")) == (["ap"], ["JP"])


def test_custom_header_names(wasm):
    settings = Settings(country_header="x-geo-cc", region_header="x-geo-region", default_region="us",
                        xff_trusted_hops=1)
    host = make_host(wasm, config_of(table_of(ROWS), settings))
    headers = tag(host, "198.51.100.1", extra=[("x-sluice-region", "kept")])
    assert (headers["x-geo-region"], headers["x-geo-cc"], headers["x-sluice-region"]) == (["eu"], ["DE"], ["kept"])


def test_matches_a_reference_longest_prefix_match(wasm):
    rows = synthetic_rows(3000, seed=7, v6_share=0.3)
    table = GeoTable.build(rows)
    host = make_host(wasm, config_of(table))
    for address in sample_addresses(rows, 1500):
        label = longest_match(rows, address)
        region, country = region_country(tag(host, address))
        expected = ("us", "") if label is None else (SETTINGS.region_of(label.country, label.region), label.country)
        assert (region[0], country[0] if country else "") == expected, address


def test_refused_configuration_keeps_the_previous_table(wasm):
    host = make_host(wasm, config_of(table_of(ROWS)))
    good = config_of(table_of(ROWS))
    bad = bytearray(good)
    bad[6] = 17  # xff_trusted_hops
    assert not host.configure(bytes(bad))
    assert "xff_trusted_hops is 17" in host.log_messages("error")[-1]
    assert not host.configure(good[:-1])
    assert not host.configure(b"")
    assert region_country(tag(host, "198.51.100.1")) == (["eu"], ["DE"])


def test_an_update_applies_to_the_next_request(wasm):
    host = make_host(wasm, config_of(table_of(ROWS)))
    assert region_country(tag(host, "198.51.100.1")) == (["eu"], ["DE"])
    moved = table_of([("198.51.100.0/24", "DE", "us")])
    assert host.configure(config_of(moved))
    assert region_country(tag(host, "198.51.100.1")) == (["us"], ["DE"])
    assert host.metric("sluice_georoute.table_id") == table_id(moved.digest)
    assert host.metric("sluice_georoute.prefixes") == 1


def test_half_a_million_prefixes_load_and_look_up(wasm):
    rows = synthetic_rows(500_000, seed=3)
    table = GeoTable.build(rows)
    configuration = config_of(table)
    host = ProxyWasmHost(wasm)
    assert host.start()
    started = time.perf_counter()
    assert host.configure(configuration), host.logs
    configure_s = time.perf_counter() - started
    assert configure_s < 5.0
    assert host.metric("sluice_georoute.prefixes") == 500_000
    ranges = host.metric("sluice_georoute.ranges")
    assert 500_000 < ranges <= 2 * 500_000 + 2
    # Spot checks against the reference (a linear scan of 500,000 rows per address: a few).
    for address in random.Random(5).sample(sample_addresses(rows, 200), 12):
        label = longest_match(rows, address)
        region, _ = region_country(tag(host, address))
        assert region[0] == ("us" if label is None else SETTINGS.region_of(label.country, label.region)), address
    print(f"\n500,000 prefixes: {len(configuration):,} bytes of configuration, {ranges:,} ranges, "
          f"configured in {configure_s * 1e3:.0f} ms (wasmtime), linear memory "
          f"{host.memory.size(host.store) * 65536 / 2**20:.0f} MiB reserved")

