"""The translator is a pure function from policy to Envoy protos."""

from __future__ import annotations

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse
from policies import demo_policy

from controlplane import resources as types
from controlplane.cache.references import managers
from controlplane.cache.snapshot import Snapshot, with_nonce
from controlplane.policy import Policy, parse_document, with_document
from controlplane.translate import ProxyGroup, translate

GROUP = ProxyGroup("edge", "127.0.0.1", 10000)


def _policy(w1: int = 100, w2: int = 0, headers: list[dict[str, object]] | None = None) -> Policy:
    policy = Policy()
    for raw in demo_policy(8001, 8002, w1, w2):
        if headers and raw["kind"] == "Service":
            raw["spec"]["routes"][0]["match"]["headers"] = headers  # type: ignore[index]
        policy = with_document(policy, parse_document(raw))
    return policy


def test_resources_per_type() -> None:
    out = translate(_policy(), GROUP)
    assert sorted(out[types.CLUSTER]) == ["classifier-v1", "classifier-v2"]
    assert sorted(out[types.ENDPOINT]) == ["classifier-v1", "classifier-v2"]
    listener = out[types.LISTENER]["edge-http"]
    assert listener.address.socket_address.port_value == 10000
    assert out[types.ENDPOINT]["classifier-v2"].endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 8002


def test_weighted_split_and_route_names() -> None:
    routes = translate(_policy(30, 70), GROUP)[types.ROUTE]["edge"]
    (vhost,) = routes.virtual_hosts
    (route,) = vhost.routes
    assert route.name == "classifier/infer"
    assert route.match.prefix == "/v2/models/classifier"
    assert [(c.name, c.weight.value) for c in route.route.weighted_clusters.clusters] == [
        ("classifier-v1", 30), ("classifier-v2", 70)]


def test_header_matching() -> None:
    routes = translate(_policy(headers=[{"name": "x-tenant", "exact": "a"}, {"name": "x-debug", "present": True}]),
                       GROUP)[types.ROUTE]["edge"]
    h1, h2 = routes.virtual_hosts[0].routes[0].match.headers
    assert (h1.name, h1.string_match.exact) == ("x-tenant", "a")
    assert (h2.name, h2.present_match) == ("x-debug", True)


def test_versions_follow_content_only() -> None:
    a = Snapshot.build(1, translate(_policy(), GROUP))
    b = Snapshot.build(7, translate(_policy(), GROUP))
    c = Snapshot.build(8, translate(_policy(0, 100), GROUP))
    for t in types.PUSH_ORDER:
        assert a.version(t) == b.version(t)  # same content, same version, whatever the revision
    assert c.version(types.ROUTE) != a.version(types.ROUTE)
    assert c.version(types.CLUSTER) == a.version(types.CLUSTER)  # clusters did not change


def test_encoded_once_and_nonce_appended() -> None:
    snap = Snapshot.build(1, translate(_policy(), GROUP))
    cds = snap.types[types.CLUSTER]
    body = cds.body(None)
    assert cds.body(None) is body  # encoded once, reused for every proxy
    response = DiscoveryResponse.FromString(with_nonce(body, "42"))
    assert response.nonce == "42" and response.version_info == cds.version
    assert len(response.resources) == 2
    only_v2 = DiscoveryResponse.FromString(snap.types[types.ENDPOINT].body(frozenset({"classifier-v2"})))
    assert len(only_v2.resources) == 1


def _two_services(*hosts: str) -> Policy:
    policy = _policy()
    for name, host in zip(("a", "b"), hosts, strict=True):
        policy = with_document(policy, parse_document({"kind": "Service", "name": name, "spec": {
            "hosts": [host], "routes": [{"name": "r", "match": {"prefix": "/"}, "split": [{"backend": "classifier-v1"}]}]}}))
    return policy.model_copy(update={"services": {k: v for k, v in policy.services.items() if k in ("a", "b")}})


def test_exact_hosts_scope_routes_per_service() -> None:
    out = translate(_two_services("a.example", "B.example"), GROUP)
    assert sorted(out[types.ROUTE]) == ["edge/a", "edge/b"]
    assert [v.name for v in out[types.ROUTE]["edge/b"].virtual_hosts] == ["b"]
    scopes = out[types.SCOPED_ROUTE]
    assert {s.key.fragments[0].string_key: s.route_configuration_name for s in scopes.values()} == {
        "a.example": "edge/a", "b.example": "edge/b"}  # hosts compare lower-case, as Envoy's domains
    (hcm,) = managers(out[types.LISTENER]["edge-http"])
    assert hcm.scoped_routes.scope_key_builder.fragments[0].header_value_extractor.name == ":authority"
    assert not hcm.HasField("rds")


def test_a_wildcard_host_keeps_one_route_configuration() -> None:
    # A scope matches its host exactly: `*.example` cannot be a scope, so nothing is scoped.
    out = translate(_two_services("a.example", "*.example"), GROUP)
    assert list(out[types.ROUTE]) == ["edge"] and out[types.SCOPED_ROUTE] == {}
    (hcm,) = managers(out[types.LISTENER]["edge-http"])
    assert hcm.rds.route_config_name == "edge"


def test_geo_routes_go_to_their_own_services_route_configuration() -> None:
    policy = _two_services("a.example", "b.example")
    for raw in ({"kind": "Geo", "name": "geo", "spec": {"default_region": "us", "prefixes": [
                    {"cidr": "198.51.100.0/24", "country": "DE", "region": "eu"}]}},
                {"kind": "GeoRoute", "name": "by-region", "spec": {"service": "a", "route": "r", "regions": {
                    "eu": {"backend": "classifier-v2", "fallback": ["us"]}, "us": {"backend": "classifier-v1"}}}}):
        policy = with_document(policy, parse_document(raw))
    out = translate(policy, GROUP)
    assert [r.route.cluster for r in out[types.ROUTE]["edge/a"].virtual_hosts[0].routes] == [
        "geo.by-region.eu", "geo.by-region.us", "classifier-v1"]
    assert len(out[types.ROUTE]["edge/b"].virtual_hosts[0].routes) == 1
