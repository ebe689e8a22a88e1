"""Traffic policy in the model (defaults, bounds, error paths) and in the translated protos."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.health_check_pb2 import HealthCheck
from envoy.config.route.v3.route_components_pb2 import Route
from envoy.extensions.load_balancing_policies.least_request.v3.least_request_pb2 import LeastRequest
from envoy.extensions.load_balancing_policies.maglev.v3.maglev_pb2 import Maglev
from envoy.extensions.load_balancing_policies.ring_hash.v3.ring_hash_pb2 import RingHash
from envoy.extensions.load_balancing_policies.round_robin.v3.round_robin_pb2 import RoundRobin
from envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2 import PreviousHostsPredicate
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from envoy.type.v3.http_pb2 import CodecClientType
from envoy.type.v3.percent_pb2 import FractionalPercent
from google.protobuf.message import Message

from controlplane import resources as types
from controlplane.policy import InvalidPolicy, Policy, parse_document, with_document
from controlplane.translate import ProxyGroup, translate
from controlplane.translate.clusters import HTTP_PROTOCOL_OPTIONS

GROUP = ProxyGroup("edge", "127.0.0.1", 10000)


def backend(**spec: Any) -> dict[str, Any]:
    return {"kind": "Backend", "name": "model", "spec": {"endpoints": [{"address": "10.0.0.1", "port": 8001}], **spec}}


def service(**route: Any) -> dict[str, Any]:
    match = {"prefix": "/v2", **route.pop("match", {})}
    return {"kind": "Service", "name": "svc", "spec": {"routes": [
        {"name": "infer", "match": match, "split": [{"backend": "model"}], **route}]}}


def policy(*raw: dict[str, Any]) -> Policy:
    out = Policy()
    for doc in raw:
        out = with_document(out, parse_document(doc))
    return out


def cluster(**spec: Any) -> Cluster:
    return translate(policy(backend(**spec), service()), GROUP)[types.CLUSTER]["model"]


def route(**spec: Any) -> Route:
    docs = [backend(), backend() | {"name": "shadow"}, service(**spec)]
    return translate(policy(*docs), GROUP)[types.ROUTE]["edge"].virtual_hosts[0].routes[0]


def unpack(any_message: Any, kind: type[Message]) -> Any:
    out = kind()
    assert any_message.Unpack(out)
    return out


def seconds(duration: Any) -> float:
    return float(duration.ToNanoseconds()) / 1e9


def problems(raw: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidPolicy) as caught:
        parse_document(raw)
    return [(p.loc, p.msg) for p in caught.value.problems]


# --- defaults ---------------------------------------------------------------------------------


def test_default_backend() -> None:
    c = cluster()
    (lb,) = c.load_balancing_policy.policies
    assert lb.typed_extension_config.name == "envoy.load_balancing_policies.least_request"
    assert not unpack(lb.typed_extension_config.typed_config, LeastRequest).HasField("slow_start_config")

    o = c.outlier_detection
    assert (o.consecutive_5xx.value, o.enforcing_consecutive_5xx.value) == (5, 100)
    assert (o.consecutive_gateway_failure.value, o.enforcing_consecutive_gateway_failure.value) == (3, 100)
    assert (o.enforcing_success_rate.value, o.enforcing_failure_percentage.value) == (0, 0)
    assert (seconds(o.interval), seconds(o.base_ejection_time), seconds(o.max_ejection_time)) == (10, 30, 300)
    assert o.max_ejection_percent.value == 50

    assert list(c.health_checks) == []
    (t,) = c.circuit_breakers.thresholds
    assert (t.max_connections.value, t.max_pending_requests.value, t.max_requests.value, t.max_retries.value) == (
        1024, 1024, 1024, 3)
    assert (t.retry_budget.budget_percent.value, t.retry_budget.min_retry_concurrency.value) == (20, 3)
    assert t.track_remaining

    options = unpack(c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS], HttpProtocolOptions)
    assert seconds(options.common_http_protocol_options.idle_timeout) == 60
    assert options.explicit_http_config.HasField("http_protocol_options")


def test_default_route() -> None:
    action = route().route
    assert seconds(action.timeout) == 30 and not action.HasField("idle_timeout")
    r = action.retry_policy
    assert r.retry_on == "connect-failure,refused-stream,unavailable,cancelled,reset"
    assert r.num_retries.value == 2 and not r.HasField("per_try_timeout")
    (predicate,) = r.retry_host_predicate
    assert predicate.name == "envoy.retry_host_predicates.previous_hosts"
    unpack(predicate.typed_config, PreviousHostsPredicate)
    assert r.host_selection_retry_max_attempts == 5
    assert list(action.request_mirror_policies) == [] and list(action.hash_policy) == []


def test_defaults_survive_the_store_round_trip() -> None:
    """The store keeps `model_dump(mode="json")`; reading it back must give the same policy."""
    for raw in (backend(), service()):
        doc = parse_document(raw)
        assert parse_document(doc.dump()).spec == doc.spec


# --- backends ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kind"), [("round_robin", RoundRobin), ("least_request", LeastRequest)])
def test_slow_start(name: str, kind: type[Message]) -> None:
    (lb,) = cluster(lb_policy=name, slow_start={"window_s": 45, "aggression": 2, "min_weight_percent": 5}
                    ).load_balancing_policy.policies
    assert lb.typed_extension_config.name == f"envoy.load_balancing_policies.{name}"
    config = unpack(lb.typed_extension_config.typed_config, kind).slow_start_config
    assert seconds(config.slow_start_window) == 45
    assert (config.aggression.default_value, config.min_weight_percent.value) == (2, 5)


@pytest.mark.parametrize(("name", "kind"), [("ring_hash", RingHash), ("maglev", Maglev)])
def test_hashing_load_balancers(name: str, kind: type[Message]) -> None:
    (lb,) = cluster(lb_policy=name).load_balancing_policy.policies
    assert lb.typed_extension_config.name == f"envoy.load_balancing_policies.{name}"
    unpack(lb.typed_extension_config.typed_config, kind)


def test_outlier_detection_every_detector() -> None:
    o = cluster(outlier_detection={
        "consecutive_5xx": None, "consecutive_gateway_errors": 2,
        "success_rate": {"stdev_factor": 1.5, "minimum_hosts": 3, "request_volume": 40},
        "failure_percentage": {"threshold_percent": 70, "minimum_hosts": 2, "request_volume": 20},
        "interval_s": 2.5, "base_ejection_time_s": 15, "max_ejection_time_s": 120, "max_ejection_percent": 34,
    }).outlier_detection
    assert o.enforcing_consecutive_5xx.value == 0 and not o.HasField("consecutive_5xx")
    assert (o.consecutive_gateway_failure.value, o.enforcing_consecutive_gateway_failure.value) == (2, 100)
    assert (o.success_rate_stdev_factor.value, o.success_rate_minimum_hosts.value,
            o.success_rate_request_volume.value, o.enforcing_success_rate.value) == (1500, 3, 40, 100)
    assert (o.failure_percentage_threshold.value, o.failure_percentage_minimum_hosts.value,
            o.failure_percentage_request_volume.value, o.enforcing_failure_percentage.value) == (70, 2, 20, 100)
    assert (seconds(o.interval), seconds(o.base_ejection_time), seconds(o.max_ejection_time)) == (2.5, 15, 120)
    assert o.max_ejection_percent.value == 34


def test_outlier_detection_off() -> None:
    assert not cluster(outlier_detection=None).HasField("outlier_detection")


@pytest.mark.parametrize(("protocol", "codec"), [("http1", CodecClientType.HTTP1), ("http2", CodecClientType.HTTP2)])
def test_health_check(protocol: str, codec: int) -> None:
    (h,) = cluster(protocol=protocol, health_check={
        "path": "/v2/models/classifier/ready", "interval_s": 3, "timeout_s": 0.5,
        "healthy_threshold": 2, "unhealthy_threshold": 4}).health_checks
    assert h.http_health_check.path == "/v2/models/classifier/ready"
    assert h.http_health_check.codec_client_type == codec
    assert (seconds(h.interval), seconds(h.no_traffic_interval), seconds(h.timeout)) == (3, 3, 0.5)
    assert (h.healthy_threshold.value, h.unhealthy_threshold.value) == (2, 4)


def test_health_check_defaults() -> None:
    (h,) = cluster(health_check={}).health_checks
    assert isinstance(h, HealthCheck) and h.http_health_check.path == "/v2/health/ready"
    assert (seconds(h.interval), seconds(h.timeout), h.healthy_threshold.value, h.unhealthy_threshold.value) == (
        5, 1, 1, 2)


def test_circuit_breakers() -> None:
    (t,) = cluster(circuit_breakers={"max_connections": 8, "max_pending_requests": 16, "max_requests": 32,
                                     "max_retries": 4, "retry_budget": None}).circuit_breakers.thresholds
    assert (t.max_connections.value, t.max_pending_requests.value, t.max_requests.value, t.max_retries.value) == (
        8, 16, 32, 4)
    assert not t.HasField("retry_budget")
    (t,) = cluster(circuit_breakers={"retry_budget": {"budget_percent": 12.5, "min_retry_concurrency": 0}}
                   ).circuit_breakers.thresholds
    assert (t.retry_budget.budget_percent.value, t.retry_budget.min_retry_concurrency.value) == (12.5, 0)


def test_http2_and_idle_timeout() -> None:
    c = cluster(protocol="http2", idle_timeout_s=0)
    options = unpack(c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS], HttpProtocolOptions)
    assert options.explicit_http_config.HasField("http2_protocol_options")
    assert seconds(options.common_http_protocol_options.idle_timeout) == 0  # Envoy: never


# --- routes -----------------------------------------------------------------------------------


def test_retries() -> None:
    r = route(retries={"num_retries": 4, "retry_on": ["5xx", "deadline-exceeded"], "per_try_timeout_s": 2.5,
                       "other_host": False}).route.retry_policy
    assert (r.retry_on, r.num_retries.value, seconds(r.per_try_timeout)) == ("5xx,deadline-exceeded", 4, 2.5)
    assert list(r.retry_host_predicate) == [] and r.host_selection_retry_max_attempts == 0


def test_retries_off_and_timeouts() -> None:
    action = route(retries=None, timeout_s=0, idle_timeout_s=12.5).route
    assert not action.HasField("retry_policy")
    assert seconds(action.timeout) == 0 and seconds(action.idle_timeout) == 12.5


@pytest.mark.parametrize(("methods", "exact", "regex"), [(["POST"], "POST", ""), (["GET", "HEAD"], "", "GET|HEAD")])
def test_methods(methods: list[str], exact: str, regex: str) -> None:
    headers = route(match={"methods": methods, "headers": [{"name": "x-a", "exact": "1"}]}).match.headers
    assert [h.name for h in headers] == ["x-a", ":method"]
    assert (headers[1].string_match.exact, headers[1].string_match.safe_regex.regex) == (exact, regex)


def test_query_parameters() -> None:
    q = route(match={"query_parameters": [
        {"name": "a", "exact": "1"}, {"name": "b", "prefix": "p"}, {"name": "c", "regex": "x+"},
        {"name": "d", "present": True}]}).match.query_parameters
    assert [x.name for x in q] == ["a", "b", "c", "d"]
    assert (q[0].string_match.exact, q[1].string_match.prefix, q[2].string_match.safe_regex.regex) == ("1", "p", "x+")
    assert q[3].present_match


def test_mirrors() -> None:
    (m,) = route(mirrors=[{"backend": "shadow", "percent": 12.5}]).route.request_mirror_policies
    assert m.cluster == "shadow"
    share = m.runtime_fraction.default_value
    assert (share.numerator, share.denominator) == (125_000, FractionalPercent.MILLION)
    (m,) = route(mirrors=[{"backend": "shadow"}]).route.request_mirror_policies
    assert m.runtime_fraction.default_value.numerator == 1_000_000


def test_hash_on() -> None:
    header, cookie, query, source = route(hash_on=[
        {"type": "header", "name": "x-user", "terminal": True}, {"type": "cookie", "name": "aff", "cookie_ttl_s": 600},
        {"type": "query_parameter", "name": "session"}, {"type": "source_ip"}]).route.hash_policy
    assert (header.header.header_name, header.terminal) == ("x-user", True)
    assert (cookie.cookie.name, seconds(cookie.cookie.ttl), cookie.terminal) == ("aff", 600, False)
    assert query.query_parameter.name == "session"
    assert source.connection_properties.source_ip
    (cookie,) = route(hash_on=[{"type": "cookie", "name": "aff"}]).route.hash_policy
    assert not cookie.cookie.HasField("ttl")  # no ttl: Envoy hashes the cookie but never sets it


def test_backends_named() -> None:
    doc = parse_document(service(mirrors=[{"backend": "shadow"}]))
    assert doc.spec.routes[0].backends_named() == [("split.0.backend", "model"), ("mirrors.0.backend", "shadow")]


# --- bad input --------------------------------------------------------------------------------

BAD_BACKENDS: list[tuple[dict[str, Any], str, str]] = [
    ({"lb_policy": "random"}, "spec.lb_policy", "Input should be"),
    ({"lb_policy": "ring_hash", "slow_start": {"window_s": 10}}, "spec", "slow_start works with round_robin"),
    ({"slow_start": {"window_s": 0}}, "spec.slow_start.window_s", "greater than 0"),
    ({"slow_start": {}}, "spec.slow_start.window_s", "Field required"),
    ({"outlier_detection": {"consecutive_5xx": 0}}, "spec.outlier_detection.consecutive_5xx", "greater than or equal to 1"),
    ({"outlier_detection": {"max_ejection_percent": 101}}, "spec.outlier_detection.max_ejection_percent", "less than"),
    ({"outlier_detection": {"base_ejection_time_s": 60, "max_ejection_time_s": 30}}, "spec.outlier_detection",
     "max_ejection_time_s is below base_ejection_time_s"),
    ({"outlier_detection": {"success_rate": {"stdev_factor": -1}}}, "spec.outlier_detection.success_rate.stdev_factor",
     "greater than 0"),
    ({"outlier_detection": {"failure_percentage": {"threshold_percent": 150}}},
     "spec.outlier_detection.failure_percentage.threshold_percent", "less than or equal to 100"),
    ({"health_check": {"path": "ready"}}, "spec.health_check.path", "should match pattern"),
    ({"health_check": {"interval_s": 1, "timeout_s": 2}}, "spec.health_check", "timeout_s exceeds interval_s"),
    ({"health_check": {"unhealthy_threshold": 0}}, "spec.health_check.unhealthy_threshold", "greater than or equal to 1"),
    ({"circuit_breakers": {"max_requests": 0}}, "spec.circuit_breakers.max_requests", "greater than or equal to 1"),
    ({"circuit_breakers": {"retry_budget": {"budget_percent": 0}}}, "spec.circuit_breakers.retry_budget.budget_percent",
     "greater than 0"),
    ({"idle_timeout_s": -1}, "spec.idle_timeout_s", "greater than or equal to 0"),
    ({"protocol": "http3"}, "spec.protocol", "Input should be 'http1' or 'http2'"),
    ({"outlier_detection": {"consecutive_errors": 5}}, "spec.outlier_detection.consecutive_errors", "Extra inputs"),
]


@pytest.mark.parametrize(("spec", "loc", "msg"), BAD_BACKENDS)
def test_bad_backends_name_the_field(spec: dict[str, Any], loc: str, msg: str) -> None:
    ((where, why),) = problems(backend(**spec))
    assert where == loc and msg in why, why


BAD_ROUTES: list[tuple[dict[str, Any], str, str]] = [
    ({"retries": {"retry_on": ["connect-failure", "sometimes"]}}, "spec.routes.0.retries.retry_on.1", "Input should be"),
    ({"retries": {"retry_on": []}}, "spec.routes.0.retries.retry_on", "at least 1 item"),
    ({"retries": {"retry_on": ["5xx", "5xx"]}}, "spec.routes.0.retries", "more than once"),
    ({"retries": {"num_retries": 0}}, "spec.routes.0.retries.num_retries", "greater than or equal to 1"),
    ({"retries": {"num_retries": 11}}, "spec.routes.0.retries.num_retries", "less than or equal to 10"),
    ({"retries": {"per_try_timeout_s": 40}}, "spec.routes.0", "per_try_timeout_s 40.0 exceeds timeout_s 30.0"),
    ({"idle_timeout_s": 4000}, "spec.routes.0.idle_timeout_s", "less than or equal to 3600"),
    ({"match": {"methods": ["FETCH"]}}, "spec.routes.0.match.methods.0", "Input should be"),
    ({"match": {"methods": ["GET", "GET"]}}, "spec.routes.0.match", "more than once"),
    ({"match": {"methods": ["GET"], "headers": [{"name": ":method", "exact": "GET"}]}}, "spec.routes.0.match",
     "not both"),
    ({"match": {"query_parameters": [{"name": "a"}]}}, "spec.routes.0.match.query_parameters.0", "exactly one"),
    ({"match": {"query_parameters": [{"name": "a", "regex": "("}]}}, "spec.routes.0.match.query_parameters.0",
     "invalid regular expression"),
    ({"mirrors": [{"backend": "shadow", "percent": 0}]}, "spec.routes.0.mirrors.0.percent", "greater than 0"),
    ({"mirrors": [{"backend": "Shadow"}]}, "spec.routes.0.mirrors.0.backend", "should match pattern"),
    ({"mirrors": [{"backend": "shadow"}, {"backend": "shadow"}]}, "spec.routes.0", "mirrors names a backend more"),
    ({"hash_on": [{"type": "header"}]}, "spec.routes.0.hash_on.0", "name is required"),
    ({"hash_on": [{"type": "source_ip", "name": "x"}]}, "spec.routes.0.hash_on.0", "name is required"),
    ({"hash_on": [{"type": "header", "name": "bad header"}]}, "spec.routes.0.hash_on.0", "invalid header name"),
    ({"hash_on": [{"type": "header", "name": "x", "cookie_ttl_s": 5}]}, "spec.routes.0.hash_on.0", "only for type cookie"),
    ({"hash_on": [{"type": "ip"}]}, "spec.routes.0.hash_on.0.type", "Input should be"),
]


@pytest.mark.parametrize(("spec", "loc", "msg"), BAD_ROUTES)
def test_bad_routes_name_the_field(spec: dict[str, Any], loc: str, msg: str) -> None:
    ((where, why),) = problems(service(**spec))
    assert where == loc and msg in why, why
