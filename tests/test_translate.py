"""The translator is a pure function from policy to Envoy protos."""

from __future__ import annotations

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse
from policies import demo_policy

from controlplane import resources as types
from controlplane.cache.references import managers
from controlplane.cache.snapshot import Snapshot, with_nonce
from controlplane.policy import Policy, parse_document, with_document
from controlplane.translate import MadeRoutes, Options, ProxyGroup, translate

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


def _service(name: str, weight: int) -> dict[str, object]:
    return {"kind": "Service", "name": name, "spec": {"hosts": [f"{name}.example"], "routes": [
        {"name": "r", "match": {"prefix": "/"},
         "split": [{"backend": "classifier-v1", "weight": weight}, {"backend": "classifier-v2", "weight": 100 - weight}]}]}}


def _encoded(resources: dict[str, dict[str, object]]) -> dict[str, dict[str, bytes]]:
    return {t: {n: m.SerializeToString(deterministic=True) for n, m in msgs.items()}  # type: ignore[attr-defined]
            for t, msgs in resources.items()}


def test_made_routes_retranslate_only_the_services_a_write_changed() -> None:
    policy = _policy()
    for name in ("a", "b", "c"):
        policy = with_document(policy, parse_document(_service(name, 50)))
    policy = policy.model_copy(update={"services": {k: v for k, v in policy.services.items() if k in "abc"}})
    options = Options(made_routes=MadeRoutes())
    first = translate(policy, GROUP, options)[types.ROUTE]
    changed = with_document(policy, parse_document(_service("b", 20)))
    second = translate(changed, GROUP, options)
    # Unchanged services are the same objects as before; the changed one is made afresh...
    assert second[types.ROUTE]["edge/a"] is first["edge/a"] and second[types.ROUTE]["edge/c"] is first["edge/c"]
    assert second[types.ROUTE]["edge/b"] is not first["edge/b"]
    # ...and the output is exactly what a translation from scratch gives.
    assert _encoded(second) == _encoded(translate(changed, GROUP))  # type: ignore[arg-type]
    removed = changed.model_copy(update={"services": {k: v for k, v in changed.services.items() if k != "c"}})
    assert sorted(translate(removed, GROUP, options)[types.ROUTE]) == ["edge/a", "edge/b"]


def test_a_snapshot_reuses_the_packing_of_messages_it_is_given_again() -> None:
    options = Options(made_routes=MadeRoutes())
    policy = with_document(with_document(_policy(), parse_document(_service("a", 50))), parse_document(_service("b", 50)))
    policy = policy.model_copy(update={"services": {k: v for k, v in policy.services.items() if k in "ab"}})
    previous = Snapshot.build(1, translate(policy, GROUP, options))
    changed = with_document(policy, parse_document(_service("b", 30)))
    reused = Snapshot.build(2, translate(changed, GROUP, options), previous)
    fresh = Snapshot.build(2, translate(changed, GROUP))
    routes = reused.types[types.ROUTE]
    assert routes.resources["edge/a"] is previous.types[types.ROUTE].resources["edge/a"]
    assert routes.resources["edge/b"] is not previous.types[types.ROUTE].resources["edge/b"]
    for t in types.PUSH_ORDER:  # the same versions, resources and encodings as a build from scratch
        if t in fresh.types:
            assert reused.types[t].versions == fresh.types[t].versions
            assert reused.types[t].body(None) == fresh.types[t].body(None)
