"""Geo and GeoRoute objects: field rules, cross-object rules, and what the translator makes of
them (failover clusters with priorities, regional routes before the route, the filter config)."""

from __future__ import annotations

from typing import Any

from policies import demo_policy, field_problems

from controlplane import resources as types
from controlplane.cache.consistency import problems as snapshot_problems
from controlplane.geotable.compact import table_id
from controlplane.geotable.table import inline_table
from controlplane.policy import Policy, parse_document, with_document
from controlplane.translate import Options, ProxyGroup, translate, translate_shares
from controlplane.translate.filters import GEOROUTE, RATELIMIT

GROUP = ProxyGroup("edge", "127.0.0.1", 10000)
HEALTH = {"path": "/v2/health/ready", "interval_s": 1}
GEO = {"kind": "Geo", "name": "geo", "spec": {"default_region": "us", "prefixes": [
    {"cidr": "198.51.100.0/24", "country": "DE", "region": "eu"},
    {"cidr": "203.0.113.0/24", "country": "US"}]}}
GEOROUTE_DOC = {"kind": "GeoRoute", "name": "by-region", "spec": {
    "service": "classifier", "route": "infer",
    "regions": {"eu": {"backend": "classifier-v2", "fallback": ["us"]}, "us": {"backend": "classifier-v1"}}}}


def build(*documents: dict[str, Any], health: bool = True) -> Policy:
    policy = Policy()
    for raw in [*demo_policy(8001, 8002), *documents]:
        if raw["kind"] == "Backend" and health:
            raw = {**raw, "spec": {**raw["spec"], "health_check": HEALTH}}
        policy = with_document(policy, parse_document(raw))
    return policy


def test_field_rules() -> None:
    def geo(**spec: Any) -> dict[str, Any]:
        return {"kind": "Geo", "name": "geo", "spec": {"default_region": "us", **spec}}

    assert field_problems(geo(prefixes=[{"cidr": "10.0.0.1/8", "region": "eu"}]))[0][0] == "spec.prefixes.0.cidr"
    assert "name a country, a region" in field_problems(geo(prefixes=[{"cidr": "10.0.0.0/8"}]))[0][1]
    assert field_problems(geo(prefixes=[{"cidr": "10.0.0.0/8", "country": "de"}]))[0][0] == "spec.prefixes.0.country"
    assert "prefixes.1: 10.0.0.0/8 is already prefixes.0" in field_problems(geo(prefixes=[
        {"cidr": "10.0.0.0/8", "region": "eu"}, {"cidr": "10.0.0.0/8", "region": "us"}]))[0][1]
    assert "is already prefixes.0" in field_problems(geo(prefixes=[
        {"cidr": "10.0.0.0/8", "region": "eu"}, {"cidr": "::ffff:10.0.0.0/104", "region": "us"}]))[0][1]
    assert "must differ" in field_problems(geo(region_header="x-a", country_header="x-a"))[0][1]
    assert "relies on" in field_problems(geo(region_header="x-forwarded-for"))[0][1]
    assert field_problems(geo(region_header="X-Region"))[0][0] == "spec.region_header"
    assert "not both" in field_problems(geo(prefixes=[{"cidr": "10.0.0.0/8", "region": "eu"}],
                                            table="sha256:" + "0" * 64))[0][1]
    route = {"kind": "GeoRoute", "name": "r", "spec": {"service": "s", "route": "r", "regions": {
        "eu": {"backend": "b", "fallback": ["eu"]}}}}
    assert "names the region itself" in field_problems(route)[0][1]
    route["spec"]["regions"]["eu"]["fallback"] = ["ap"]
    assert "'ap', which is not in regions" in field_problems(route)[0][1]


def test_cross_object_rules() -> None:
    assert build(GEO, GEOROUTE_DOC).problems() == []
    missing = build(GEOROUTE_DOC).problems()
    assert [p.loc for p in missing] == ["georoutes.by-region"] and "Geo object 'geo'" in missing[0].msg
    unchecked = build(GEO, GEOROUTE_DOC, health=False).problems()
    assert [p.loc for p in unchecked] == ["georoutes.by-region.regions.eu.backend",
                                          "georoutes.by-region.regions.us.backend"]
    assert "no health_check" in unchecked[0].msg
    elsewhere = {**GEOROUTE_DOC, "spec": {**GEOROUTE_DOC["spec"], "route": "nope", "regions": {
        "eu": {"backend": "classifier-v9"}}}}
    assert [p.loc for p in build(GEO, elsewhere).problems()] == ["georoutes.by-region.route",
                                                                 "georoutes.by-region.regions.eu.backend"]
    twice = {**GEOROUTE_DOC, "name": "again"}
    assert any("already routes this route" in p.msg for p in build(GEO, GEOROUTE_DOC, twice).problems())
    canary = {"kind": "Canary", "name": "c", "spec": {"service": "classifier", "route": "infer", "step_weight": 20,
                                                      "stable": "classifier-v1", "canary": "classifier-v2"}}
    assert any("drives this route's split" in p.msg for p in build(GEO, GEOROUTE_DOC, canary).problems())
    named = {**GEO, "name": "other"}
    assert "must be named 'geo'" in build(named).problems()[0].msg


def test_backends_and_services_in_use_are_named() -> None:
    policy = build(GEO, GEOROUTE_DOC)
    assert "georoutes.by-region.regions.eu" in policy.users_of_backend("classifier-v2")
    assert "georoutes.by-region" in policy.users_of_service("classifier")


def test_failover_cluster_has_the_fallbacks_at_the_next_priorities() -> None:
    out = translate(build(GEO, GEOROUTE_DOC), GROUP)
    assert {"geo.by-region.eu", "geo.by-region.us"} <= set(out[types.CLUSTER])
    cluster = out[types.CLUSTER]["geo.by-region.eu"]
    assert cluster.health_checks[0].http_health_check.path == "/v2/health/ready"
    levels = out[types.ENDPOINT]["geo.by-region.eu"].endpoints
    assert [(level.priority, level.lb_endpoints[0].endpoint.address.socket_address.port_value)
            for level in levels] == [(0, 8002), (1, 8001)]
    assert [level.priority for level in out[types.ENDPOINT]["geo.by-region.us"].endpoints] == [0]
    assert snapshot_problems(out) == []


def test_regional_routes_come_first_and_retry_on_the_next_priority() -> None:
    routes = translate(build(GEO, GEOROUTE_DOC), GROUP)[types.ROUTE]["edge"].virtual_hosts[0].routes
    assert [r.name for r in routes] == ["classifier/infer"] * 3  # rate limits see one route
    eu, us, base = routes
    assert [(h.name, h.string_match.exact) for h in eu.match.headers] == [("x-sluice-region", "eu")]
    assert (eu.route.cluster, us.route.cluster) == ("geo.by-region.eu", "geo.by-region.us")
    assert eu.match.prefix == base.match.prefix == "/v2/models/classifier"
    assert eu.route.retry_policy.retry_priority.name == "envoy.retry_priorities.previous_priorities"
    assert not eu.route.HasField("weighted_clusters") and base.route.HasField("weighted_clusters")


def test_filter_chain_puts_georoute_before_ratelimit() -> None:
    limit = {"kind": "RateLimit", "name": "per-client", "spec": {"service": "classifier", "rate": 1, "burst": 5}}
    out = translate(build(GEO, limit), GROUP)
    assert sorted(out[types.EXTENSION_CONFIG]) == [GEOROUTE, RATELIMIT]
    listener = out[types.LISTENER]["edge-http"]
    assert GEOROUTE.encode() in listener.SerializeToString()
    shares = translate_shares(build(GEO, limit), {"per-client": 0.5})[types.EXTENSION_CONFIG]
    assert sorted(shares) == [GEOROUTE, RATELIMIT]  # a proxy's overrides replace the whole type


def test_an_uploaded_table_missing_from_memory_holds_the_revision_back() -> None:
    table, digest = inline_table(tuple(build(GEO).geo["geo"].prefixes))
    uploaded = {"kind": "Geo", "name": "geo", "spec": {"default_region": "us", "table": digest}}
    missing = translate(build(uploaded), GROUP)
    assert GEOROUTE not in missing[types.EXTENSION_CONFIG]
    assert snapshot_problems(missing) == ["listener edge-http discovers filter 'sluice.georoute', which has no config"]
    found = translate(build(uploaded), GROUP, Options(geo_tables={digest: table}.get))
    config = found[types.EXTENSION_CONFIG][GEOROUTE]
    assert table_id(digest).to_bytes(4, "little") in config.SerializeToString()
    assert snapshot_problems(found) == []
