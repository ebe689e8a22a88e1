"""Load-aware balancing and stream-safe retries in the policy model and in the translated protos."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.client_side_weighted_round_robin_pb2 import (
    ClientSideWeightedRoundRobin,
)
from envoy.extensions.load_balancing_policies.least_request.v3.least_request_pb2 import LeastRequest
from envoy.extensions.load_balancing_policies.override_host.v3.override_host_pb2 import OverrideHost
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from test_traffic_policy import backend, cluster, policy, problems, route, seconds, service, unpack

from controlplane.translate.clusters import HTTP_PROTOCOL_OPTIONS
from controlplane.translate.picker import picker_config, picker_upstream_config


def test_load_aware_is_client_side_weighted_round_robin_on_orca_reports() -> None:
    (lb,) = cluster(lb_policy="load_aware").load_balancing_policy.policies
    assert lb.typed_extension_config.name == "envoy.load_balancing_policies.client_side_weighted_round_robin"
    config = unpack(lb.typed_extension_config.typed_config, ClientSideWeightedRoundRobin)
    assert (seconds(config.blackout_period), seconds(config.weight_expiration_period)) == (1, 10)
    assert seconds(config.weight_update_period) == 1 and config.error_utilization_penalty.value == 1
    assert not config.enable_oob_load_report.value, "reports ride on every answer, no extra stream"

    (lb,) = cluster(lb_policy="load_aware", slow_start={"window_s": 20}, load_aware={
        "blackout_period_s": 0.5, "weight_expiration_s": 3, "weight_update_period_s": 0.2,
        "error_utilization_penalty": 2}).load_balancing_policy.policies
    config = unpack(lb.typed_extension_config.typed_config, ClientSideWeightedRoundRobin)
    assert (seconds(config.blackout_period), seconds(config.weight_expiration_period)) == (0.5, 3)
    assert seconds(config.weight_update_period) == 0.2 and config.error_utilization_penalty.value == 2
    assert seconds(config.slow_start_config.slow_start_window) == 20


def test_least_request_tuning() -> None:
    (lb,) = cluster().load_balancing_policy.policies
    default = unpack(lb.typed_extension_config.typed_config, LeastRequest)
    assert not default.HasField("choice_count") and not default.HasField("active_request_bias"), "Envoy's defaults"
    (lb,) = cluster(least_request={"choice_count": 3, "active_request_bias": 0.5}).load_balancing_policy.policies
    tuned = unpack(lb.typed_extension_config.typed_config, LeastRequest)
    assert (tuned.choice_count.value, tuned.active_request_bias.default_value) == (3, 0.5)


BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"lb_policy": "least_load"}, "spec.lb_policy", "Input should be"),
    ({"load_aware": {}}, "spec", "load_aware is set but lb_policy is least_request"),
    ({"lb_policy": "load_aware", "least_request": {}}, "spec", "least_request is set but lb_policy is load_aware"),
    ({"lb_policy": "load_aware", "load_aware": {"blackout_period_s": -1}}, "spec.load_aware.blackout_period_s",
     "greater than or equal to 0"),
    ({"lb_policy": "load_aware", "load_aware": {"weight_update_period_s": 0.01}},
     "spec.load_aware.weight_update_period_s", "greater than or equal to 0.1"),
    ({"lb_policy": "load_aware", "load_aware": {"blackout_period_s": 5, "weight_expiration_s": 5}}, "spec.load_aware",
     "weight_expiration_s must exceed blackout_period_s"),
    ({"lb_policy": "load_aware", "load_aware": {"weights": 1}}, "spec.load_aware.weights", "Extra inputs"),
    ({"least_request": {"choice_count": 1}}, "spec.least_request.choice_count", "greater than or equal to 2"),
    ({"least_request": {"active_request_bias": 11}}, "spec.least_request.active_request_bias", "less than or equal to 10"),
]


@pytest.mark.parametrize(("spec", "loc", "msg"), BAD)
def test_bad_load_balancing_names_the_field(spec: dict[str, Any], loc: str, msg: str) -> None:
    ((where, why),) = problems(backend(**spec))
    assert where == loc and msg in why, why


def test_retriable_status_codes_are_retried_before_the_first_byte() -> None:
    r = route(retries={"retriable_status_codes": [429, 503], "per_try_timeout_s": 0.2}).route.retry_policy
    assert r.retry_on == "connect-failure,refused-stream,unavailable,cancelled,reset,retriable-status-codes"
    assert list(r.retriable_status_codes) == [429, 503]
    assert seconds(r.per_try_timeout) == 0.2
    assert "retriable-status-codes" not in route().route.retry_policy.retry_on


BAD_RETRIES: list[tuple[dict[str, Any], str, str]] = [
    ({"retriable_status_codes": [200]}, "spec.routes.0.retries.retriable_status_codes.0", "greater than or equal to 400"),
    ({"retriable_status_codes": [429, 429]}, "spec.routes.0.retries", "names a status more than once"),
]


@pytest.mark.parametrize(("retries", "loc", "msg"), BAD_RETRIES)
def test_bad_retries_name_the_field(retries: dict[str, Any], loc: str, msg: str) -> None:
    ((where, why),) = problems(service(retries=retries))
    assert where == loc and msg in why, why


def test_shedding_covers_routes_whose_every_backend_sheds() -> None:
    shedding = {"queue_threshold": 8, "retry_after_s": 2, "report_max_age_s": 1.5}
    both = policy(
        backend(shedding=shedding, endpoints=[{"address": "10.0.0.1", "port": 8001}, {"address": "::1", "port": 8002}]),
        backend(shedding=shedding | {"queue_threshold": 3}, endpoints=[{"address": "10.0.0.2", "port": 8001}]) | {"name": "other"},
        backend() | {"name": "plain"},
        {"kind": "Service", "name": "svc", "spec": {"routes": [
            {"name": "shed", "match": {"prefix": "/a"}, "split": [{"backend": "model"}, {"backend": "other"}]},
            {"name": "mixed", "match": {"prefix": "/b"}, "split": [{"backend": "model"}, {"backend": "plain"}]},
            {"name": "idle", "match": {"prefix": "/c"}, "split": [{"backend": "model"}, {"backend": "plain", "weight": 0}]},
        ]}})
    config = picker_config(both)
    assert config is not None and config["priority_header"] == "x-sluice-priority"
    assert [r["route"] for r in config["routes"]] == ["svc/shed", "svc/idle"]  # type: ignore[index]
    shed = config["routes"][0]  # type: ignore[index]
    assert (shed["shed_retry_after_s"], shed["max_age_ms"], shed["pick"]) == (2, 1500, False)
    assert shed["endpoints"] == [{"address": "10.0.0.1:8001", "threshold": 8}, {"address": "10.0.0.2:8001", "threshold": 3},
                                 {"address": "[::1]:8002", "threshold": 8}]
    assert picker_config(policy(backend(), service())) is None


BAD_SHEDDING: list[tuple[dict[str, Any], str, str]] = [
    ({"shedding": {}}, "spec.shedding.queue_threshold", "Field required"),
    ({"shedding": {"queue_threshold": 0}}, "spec.shedding.queue_threshold", "greater than or equal to 1"),
    ({"shedding": {"queue_threshold": 4, "retry_after_s": 0}}, "spec.shedding.retry_after_s", "greater than or equal to 1"),
    ({"shedding": {"queue_threshold": 4, "report_max_age_s": 601}}, "spec.shedding.report_max_age_s", "less than or equal to 600"),
]


@pytest.mark.parametrize(("spec", "loc", "msg"), BAD_SHEDDING)
def test_bad_shedding_names_the_field(spec: dict[str, Any], loc: str, msg: str) -> None:
    ((where, why),) = problems(backend(**spec))
    assert where == loc and msg in why, why


def test_least_loaded_is_override_host_led_by_the_picker() -> None:
    c = cluster(lb_policy="least_loaded", prefix_affinity={"prefix_bytes": 128, "load_bound": 1.5})
    (lb,) = c.load_balancing_policy.policies
    assert lb.typed_extension_config.name == "envoy.load_balancing_policies.override_host"
    override = unpack(lb.typed_extension_config.typed_config, OverrideHost)
    assert [s.header for s in override.override_host_sources] == ["x-sluice-endpoint"]
    (fallback,) = override.fallback_policy.policies
    assert fallback.typed_extension_config.name == "envoy.load_balancing_policies.least_request"
    options = unpack(c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS], HttpProtocolOptions)
    assert [f.name for f in options.http_filters] == ["sluice.picker.upstream", "envoy.filters.http.upstream_codec"]
    assert list(unpack(cluster().typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS], HttpProtocolOptions).http_filters) == []

    picked = policy(backend(lb_policy="least_loaded",
                            prefix_affinity={"prefix_bytes": 128, "load_bound": 1.5, "cached_prefixes": 12}), service())
    config = picker_config(picked)
    assert config is not None and config["endpoint_header"] == "x-sluice-endpoint"
    (entry,) = config["routes"]  # type: ignore[misc]
    assert (entry["pick"], entry["prefix_bytes"], entry["load_bound_pct"], entry["cached_prefixes"],
            entry["shed_retry_after_s"]) == (True, 128, 150, 12, 0)
    assert entry["endpoints"] == [{"address": "10.0.0.1:8001", "threshold": 0}]
    assert picker_upstream_config(picked) == config, "one VM, one configuration"
    assert picker_upstream_config(policy(backend(), service())) is None
    ((where, why),) = problems(backend(prefix_affinity={}))
    assert where == "spec" and "prefix_affinity is set but lb_policy is least_request" in why
    ((where, why),) = problems(backend(lb_policy="least_loaded", prefix_affinity={"cached_prefixes": 0}))
    assert where == "spec.prefix_affinity.cached_prefixes" and "greater than or equal to 1" in why
