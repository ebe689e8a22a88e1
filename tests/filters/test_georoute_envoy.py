"""georoute.wasm in a real Envoy (V8, --concurrency 2, static bootstrap): the route is chosen
after the filter set the region header (ABI 0.2.x clears the route cache on header changes)."""

from __future__ import annotations

import http.client

import pytest
from envoy_harness import Envoy, bootstrap, free_port, serving, wasm_filter
from geo_data import table_of

from controlplane.geotable.compact import Settings, filter_config

FILTER = "georoute"  # the `wasm` fixture (conftest.py)
ROWS = [
    ("198.51.100.0/24", "DE", "eu"),
    ("203.0.113.0/24", "US", "us"),
    ("2001:db8::/32", "JP", "ap"),
]
SETTINGS = Settings(default_region="us", xff_trusted_hops=1)


def georoute_filter(wasm, configuration: bytes) -> dict:
    """Bytes, as the control plane sends them (a BytesValue)."""
    return wasm_filter(wasm, configuration, vm_id="sluice_georoute", name="sluice_georoute")


def route(name: str, region: str | None = None, country: str | bool | None = None) -> dict:
    headers = []
    if region is not None:
        headers.append({"name": "x-sluice-region", "string_match": {"exact": region}})
    if isinstance(country, str):
        headers.append({"name": "x-sluice-country", "string_match": {"exact": country}})
    elif country is True:
        headers.append({"name": "x-sluice-country", "present_match": True})
    return {"name": name, "match": {"prefix": "/", "headers": headers},
            "direct_response": {"status": 200, "body": {"inline_string": name}}}


ROUTES = [route("eu-de", "eu", "DE"), route("eu", "eu"), route("us-with-country", "us", True),
          route("us", "us"), route("ap", "ap"), route("no-region")]


@pytest.fixture(scope="module")
def envoy(wasm, tmp_path_factory):
    table = table_of(ROWS)
    configuration = filter_config(table, SETTINGS, table.digest)
    with serving(tmp_path_factory.mktemp("envoy"), [georoute_filter(wasm, configuration)], routes=ROUTES) as proxy:
        yield proxy


def route_of(envoy: Envoy, client: str, headers: list[tuple[str, str]] = ()) -> str:
    """The route Envoy chose, for a request the trusted load balancer forwarded from `client`."""
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
    try:
        conn.putrequest("GET", "/v2/models/classifier/infer")
        for name, value in [("X-Forwarded-For", client), ("Connection", "close"), *headers]:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


def test_routes_match_the_headers_the_filter_set(envoy):
    assert route_of(envoy, "198.51.100.20") == "eu-de"
    assert route_of(envoy, "203.0.113.20") == "us-with-country"
    assert route_of(envoy, "2001:db8::20") == "ap"
    assert route_of(envoy, "::ffff:198.51.100.20") == "eu-de"
    assert route_of(envoy, "192.0.2.1") == "us"  # unmatched: default region, no country


def test_forged_headers_never_reach_routing(envoy):
    forged = [("X-Sluice-Region", "ap"), ("x-sluice-region", "ap"), ("X-Sluice-Country", "DE")]
    assert route_of(envoy, "198.51.100.20", forged) == "eu-de"
    assert route_of(envoy, "203.0.113.20", [("X-Sluice-Country", "DE")]) == "us-with-country"
    assert route_of(envoy, "192.0.2.1", forged) == "us"  # the forged country is removed


def test_a_refused_configuration_stops_a_static_envoy(wasm, tmp_path):
    table = table_of(ROWS)
    broken = bytearray(filter_config(table, SETTINGS, table.digest))
    broken[6] = 17  # xff_trusted_hops out of bounds
    proxy = Envoy(tmp_path, bootstrap(free_port(), free_port(), [georoute_filter(wasm, bytes(broken))], routes=ROUTES))
    try:
        with pytest.raises(RuntimeError, match="exited"):
            proxy.start()
        assert "georoute: rejected plugin configuration: xff_trusted_hops is 17" in proxy.log()
    finally:
        proxy.stop()
