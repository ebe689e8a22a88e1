"""georoute.wasm in a real Envoy (V8, --concurrency 2, static bootstrap): the route is chosen
after the filter set the region header (ABI 0.2.x clears the route cache on header changes)."""

from __future__ import annotations

import base64
import http.client

import pytest
from envoy_harness import Envoy, free_port
from geo_data import table_of
from proxywasm_host import wasm_path

from controlplane.geo.compact import Settings, filter_config

ROWS = [
    ("198.51.100.0/24", "DE", "eu"),
    ("203.0.113.0/24", "US", "us"),
    ("2001:db8::/32", "JP", "ap"),
]
SETTINGS = Settings(default_region="us", xff_trusted_hops=1)
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def georoute_filter(wasm, configuration: bytes) -> dict:
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "sluice_georoute", "root_id": "sluice_georoute",
                "vm_config": {"vm_id": "sluice_georoute", "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": str(wasm)}}},
                # Bytes, as the control plane sends it: Envoy hands BytesValue to the VM as is.
                "configuration": {"@type": "type.googleapis.com/google.protobuf.BytesValue",
                                  "value": base64.b64encode(configuration).decode()},
            },
        },
    }


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


def bootstrap(port: int, admin: int, http_filters: list[dict]) -> dict:
    routes = [route("eu-de", "eu", "DE"), route("eu", "eu"), route("us-with-country", "us", True),
              route("us", "us"), route("ap", "ap"), route("no-region")]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [{
            "name": "main",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": HCM, "stat_prefix": "ingress", "use_remote_address": True,
                    "route_config": {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"],
                                                                         "routes": routes}]},
                    "http_filters": http_filters + [{
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                    }],
                },
            }]}],
        }]},
    }


@pytest.fixture(scope="module")
def wasm():
    try:
        return wasm_path("georoute")
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def envoy(wasm, tmp_path_factory):
    table = table_of(ROWS)
    port, admin = free_port(), free_port()
    config = bootstrap(port, admin, [georoute_filter(wasm, filter_config(table, SETTINGS, table.digest))])
    proxy = Envoy(tmp_path_factory.mktemp("envoy"), config, concurrency=2)
    proxy.start()
    proxy.port = port
    yield proxy
    proxy.stop()


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
    port, admin = free_port(), free_port()
    proxy = Envoy(tmp_path, bootstrap(port, admin, [georoute_filter(wasm, bytes(broken))]))
    try:
        with pytest.raises(RuntimeError, match="exited"):
            proxy.start()
        assert "georoute: rejected plugin configuration: xff_trusted_hops is 17" in proxy.log()
    finally:
        proxy.stop()
