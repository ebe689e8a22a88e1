from envoy.config.cluster.v3.circuit_breaker_pb2 import CircuitBreakers
from envoy.config.cluster.v3.cluster_pb2 import Cluster, LoadBalancingPolicy
from envoy.config.cluster.v3.outlier_detection_pb2 import OutlierDetection
from envoy.config.core.v3.base_pb2 import RoutingPriority, RuntimeDouble
from envoy.config.core.v3.config_source_pb2 import ExtensionConfigSource
from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig
from envoy.config.core.v3.health_check_pb2 import HealthCheck
from envoy.config.core.v3.protocol_pb2 import Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions
from envoy.extensions.filters.http.upstream_codec.v3.upstream_codec_pb2 import UpstreamCodec
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import HttpFilter
from envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.client_side_weighted_round_robin_pb2 import (
    ClientSideWeightedRoundRobin,
)
from envoy.extensions.load_balancing_policies.common.v3.common_pb2 import SlowStartConfig
from envoy.extensions.load_balancing_policies.least_request.v3.least_request_pb2 import LeastRequest
from envoy.extensions.load_balancing_policies.maglev.v3.maglev_pb2 import Maglev
from envoy.extensions.load_balancing_policies.override_host.v3.override_host_pb2 import OverrideHost
from envoy.extensions.load_balancing_policies.ring_hash.v3.ring_hash_pb2 import RingHash
from envoy.extensions.load_balancing_policies.round_robin.v3.round_robin_pb2 import RoundRobin
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as upstream_http
from envoy.type.v3.http_pb2 import CodecClientType
from envoy.type.v3.percent_pb2 import Percent
from google.protobuf.any_pb2 import Any
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import FloatValue, UInt32Value

from controlplane.policy import model as p
from controlplane.policy.policy import Policy
from controlplane.translate.sources import ads

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# least_loaded: the picker filter names the endpoint in this header; the cluster follows it.
ENDPOINT_HEADER = "x-sluice-endpoint"
# The picker's instance among a least_loaded cluster's upstream filters (its config by ECDS).
PICKER_UPSTREAM = "sluice.picker.upstream"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def seconds(value: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(value * 1e9))
    return d


def packed(message: Message) -> Any:
    out = Any()
    out.Pack(message)
    return out


def _enforcing(on: bool) -> UInt32Value:
    # Every detector is written out: Envoy enforces some by default (success rate) and not
    # others (gateway errors). At 0 a detector still counts, so its stats stay visible.
    return UInt32Value(value=100 if on else 0)


def _outlier_detection(o: p.OutlierDetection) -> OutlierDetection:
    out = OutlierDetection(
        enforcing_consecutive_5xx=_enforcing(o.consecutive_5xx is not None),
        enforcing_consecutive_gateway_failure=_enforcing(o.consecutive_gateway_errors is not None),
        enforcing_success_rate=_enforcing(o.success_rate is not None),
        enforcing_failure_percentage=_enforcing(o.failure_percentage is not None),
        interval=seconds(o.interval_s),
        base_ejection_time=seconds(o.base_ejection_time_s),
        max_ejection_time=seconds(o.max_ejection_time_s),
        max_ejection_percent=UInt32Value(value=o.max_ejection_percent),
    )
    if o.consecutive_5xx is not None:
        out.consecutive_5xx.value = o.consecutive_5xx
    if o.consecutive_gateway_errors is not None:
        out.consecutive_gateway_failure.value = o.consecutive_gateway_errors
    if o.success_rate is not None:
        out.success_rate_stdev_factor.value = round(o.success_rate.stdev_factor * 1000)  # Envoy's unit
        out.success_rate_minimum_hosts.value = o.success_rate.minimum_hosts
        out.success_rate_request_volume.value = o.success_rate.request_volume
    if o.failure_percentage is not None:
        out.failure_percentage_threshold.value = o.failure_percentage.threshold_percent
        out.failure_percentage_minimum_hosts.value = o.failure_percentage.minimum_hosts
        out.failure_percentage_request_volume.value = o.failure_percentage.request_volume
    return out


def _health_check(h: p.HealthCheck, protocol: str) -> HealthCheck:
    interval = seconds(h.interval_s)
    return HealthCheck(
        timeout=seconds(h.timeout_s),
        interval=interval,
        # Envoy otherwise checks an idle backend only once a minute: the first requests after a
        # quiet spell would meet an endpoint that died unnoticed.
        no_traffic_interval=interval,
        healthy_threshold=UInt32Value(value=h.healthy_threshold),
        unhealthy_threshold=UInt32Value(value=h.unhealthy_threshold),
        http_health_check=HealthCheck.HttpHealthCheck(
            path=h.path,
            codec_client_type=CodecClientType.HTTP2 if protocol == "http2" else CodecClientType.HTTP1,
        ),
    )


def _circuit_breakers(c: p.CircuitBreakers) -> CircuitBreakers:
    thresholds = CircuitBreakers.Thresholds(
        priority=RoutingPriority.DEFAULT,
        max_connections=UInt32Value(value=c.max_connections),
        max_pending_requests=UInt32Value(value=c.max_pending_requests),
        max_requests=UInt32Value(value=c.max_requests),
        max_retries=UInt32Value(value=c.max_retries),
        track_remaining=True,  # remaining_* gauges show how close a backend is to its limits
    )
    if c.retry_budget is not None:
        thresholds.retry_budget.CopyFrom(CircuitBreakers.Thresholds.RetryBudget(
            budget_percent=Percent(value=c.retry_budget.budget_percent),
            min_retry_concurrency=UInt32Value(value=c.retry_budget.min_retry_concurrency),
        ))
    return CircuitBreakers(thresholds=[thresholds])


def _slow_start(s: p.SlowStart | None) -> SlowStartConfig | None:
    if s is None:
        return None
    return SlowStartConfig(
        slow_start_window=seconds(s.window_s),
        # Envoy requires a runtime key; sluice never sets runtime values, so the default holds.
        aggression=RuntimeDouble(default_value=s.aggression, runtime_key="sluice.slow_start.aggression"),
        min_weight_percent=Percent(value=s.min_weight_percent),
    )


def _least_request(backend: p.Backend, slow_start: SlowStartConfig | None) -> LeastRequest:
    out = LeastRequest(slow_start_config=slow_start)
    if backend.least_request is not None:
        out.choice_count.value = backend.least_request.choice_count
        # Envoy requires a runtime key; sluice never sets runtime values, so the default holds.
        out.active_request_bias.CopyFrom(RuntimeDouble(default_value=backend.least_request.active_request_bias,
                                                       runtime_key="sluice.least_request.active_request_bias"))
    return out


def _load_aware(backend: p.Backend, slow_start: SlowStartConfig | None) -> ClientSideWeightedRoundRobin:
    tuning = backend.load_aware or p.LoadAware()
    return ClientSideWeightedRoundRobin(
        slow_start_config=slow_start,
        blackout_period=seconds(tuning.blackout_period_s),
        weight_expiration_period=seconds(tuning.weight_expiration_s),
        weight_update_period=seconds(tuning.weight_update_period_s),
        error_utilization_penalty=FloatValue(value=tuning.error_utilization_penalty),
    )


# Envoy's extension name for each lb_policy.
LB_EXTENSIONS = {
    "round_robin": "envoy.load_balancing_policies.round_robin",
    "least_request": "envoy.load_balancing_policies.least_request",
    "ring_hash": "envoy.load_balancing_policies.ring_hash",
    "maglev": "envoy.load_balancing_policies.maglev",
    "load_aware": "envoy.load_balancing_policies.client_side_weighted_round_robin",
    "least_loaded": "envoy.load_balancing_policies.override_host",
}


def _least_loaded() -> OverrideHost:
    # Without the header (nothing known, every endpoint cooling) and on retries, least_request picks.
    fallback = LoadBalancingPolicy(policies=[LoadBalancingPolicy.Policy(typed_extension_config=TypedExtensionConfig(
        name=LB_EXTENSIONS["least_request"], typed_config=packed(LeastRequest())))])
    return OverrideHost(override_host_sources=[OverrideHost.OverrideHostSource(header=ENDPOINT_HEADER)],
                        fallback_policy=fallback)


def _load_balancing(backend: p.Backend) -> LoadBalancingPolicy:
    slow_start = _slow_start(backend.slow_start)
    configs: dict[str, Message] = {
        "round_robin": RoundRobin(slow_start_config=slow_start),
        "least_request": _least_request(backend, slow_start),
        "ring_hash": RingHash(),
        "maglev": Maglev(),
        "load_aware": _load_aware(backend, slow_start),
        "least_loaded": _least_loaded(),
    }
    return LoadBalancingPolicy(policies=[LoadBalancingPolicy.Policy(typed_extension_config=TypedExtensionConfig(
        name=LB_EXTENSIONS[backend.lb_policy], typed_config=packed(configs[backend.lb_policy]),
    ))])


def _http_options(backend: p.Backend) -> upstream_http.HttpProtocolOptions:
    explicit = upstream_http.HttpProtocolOptions.ExplicitHttpConfig(
        http2_protocol_options=Http2ProtocolOptions()
    ) if backend.protocol == "http2" else upstream_http.HttpProtocolOptions.ExplicitHttpConfig(
        http_protocol_options=Http1ProtocolOptions()
    )
    return upstream_http.HttpProtocolOptions(
        common_http_protocol_options=HttpProtocolOptions(idle_timeout=seconds(backend.idle_timeout_s)),
        explicit_http_config=explicit,
        http_filters=_picker_upstream_filters() if backend.lb_policy == "least_loaded" else [],
    )


def _picker_upstream_filters() -> list[HttpFilter]:
    """The picker as an upstream filter sees every try, a 429 that Envoy retries elsewhere
    included, so that replica still gets its cooldown."""
    return [
        HttpFilter(name=PICKER_UPSTREAM, config_discovery=ExtensionConfigSource(config_source=ads(), type_urls=[WASM_TYPE])),
        HttpFilter(name="envoy.filters.http.upstream_codec", typed_config=packed(UpstreamCodec())),
    ]


def cluster(name: str, backend: p.Backend) -> Cluster:
    out = Cluster(
        name=name,
        type=Cluster.EDS,
        eds_cluster_config=Cluster.EdsClusterConfig(eds_config=ads()),
        connect_timeout=seconds(backend.connect_timeout_s),
        load_balancing_policy=_load_balancing(backend),
        circuit_breakers=_circuit_breakers(backend.circuit_breakers),
        typed_extension_protocol_options={HTTP_PROTOCOL_OPTIONS: packed(_http_options(backend))},
    )
    if backend.outlier_detection is not None:
        out.outlier_detection.CopyFrom(_outlier_detection(backend.outlier_detection))
    if backend.health_check is not None:
        out.health_checks.append(_health_check(backend.health_check, backend.protocol))
    return out


def clusters(policy: Policy) -> list[Cluster]:
    return [cluster(name, backend) for name, backend in sorted(policy.backends.items())]
