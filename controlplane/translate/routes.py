import threading
from collections.abc import Sequence

from envoy.config.core.v3.base_pb2 import RuntimeFractionalPercent
from envoy.config.route.v3.route_components_pb2 import (
    HeaderMatcher,
    QueryParameterMatcher,
    RetryPolicy,
    Route,
    RouteAction,
    RouteMatch,
    VirtualHost,
    WeightedCluster,
)
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.config.route.v3.scoped_route_pb2 import ScopedRouteConfiguration
from envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2 import PreviousHostsPredicate
from envoy.type.matcher.v3.regex_pb2 import RegexMatcher
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from envoy.type.v3.percent_pb2 import FractionalPercent
from google.protobuf.wrappers_pb2 import BoolValue, UInt32Value

from controlplane.policy import model as p
from controlplane.policy.policy import Policy
from controlplane.translate.clusters import packed, seconds

# The edge's routes: the one route configuration, or the scoped routes' name and the prefix of
# each service's own route configuration.
EDGE_ROUTES = "edge"

# How often Envoy may pick again when the retry predicate refuses a host it already tried.
# least_request and the hashing balancers can draw the same host repeatedly; with the small
# endpoint sets of model servers, one re-pick (Envoy's default) still lands on the failed host
# about a quarter of the time.
HOST_SELECTION_ATTEMPTS = 5


def route_name(service: str, route: str) -> str:
    """The name Envoy reports for a route (`xds.route_name`); filters key policies on it."""
    return f"{service}/{route}"


def _string(exact: str | None, prefix: str | None, regex: str | None) -> StringMatcher:
    if exact is not None:
        return StringMatcher(exact=exact)
    if prefix is not None:
        return StringMatcher(prefix=prefix)
    return StringMatcher(safe_regex=RegexMatcher(regex=regex))


def _header(h: p.HeaderMatch) -> HeaderMatcher:
    if h.present is not None:
        return HeaderMatcher(name=h.name, present_match=h.present)
    return HeaderMatcher(name=h.name, string_match=_string(h.exact, h.prefix, h.regex))


def _methods(methods: Sequence[str]) -> list[HeaderMatcher]:
    """Methods are the `:method` pseudo-header; a matcher takes one pattern, so several become
    an alternation (the names are upper-case letters only: nothing to escape)."""
    if not methods:
        return []
    if len(methods) == 1:
        return [HeaderMatcher(name=":method", string_match=StringMatcher(exact=methods[0]))]
    regex = "|".join(methods)
    return [HeaderMatcher(name=":method", string_match=StringMatcher(safe_regex=RegexMatcher(regex=regex)))]


def _query_parameter(q: p.QueryParameterMatch) -> QueryParameterMatcher:
    if q.present is not None:
        return QueryParameterMatcher(name=q.name, present_match=q.present)
    return QueryParameterMatcher(name=q.name, string_match=_string(q.exact, q.prefix, q.regex))


def _match(m: p.RouteMatch) -> RouteMatch:
    out = RouteMatch(
        headers=[*(_header(h) for h in m.headers), *_methods(m.methods)],
        query_parameters=[_query_parameter(q) for q in m.query_parameters],
    )
    if m.prefix is not None:
        out.prefix = m.prefix
    elif m.path is not None:
        out.path = m.path
    else:
        out.safe_regex.CopyFrom(RegexMatcher(regex=m.regex))
    return out


def _retry_policy(r: p.Retries) -> RetryPolicy:
    conditions = [*r.retry_on, *(["retriable-status-codes"] if r.retriable_status_codes else [])]
    out = RetryPolicy(retry_on=",".join(conditions), num_retries=UInt32Value(value=r.num_retries),
                      retriable_status_codes=r.retriable_status_codes)
    if r.per_try_timeout_s is not None:
        out.per_try_timeout.CopyFrom(seconds(r.per_try_timeout_s))
    if r.other_host:
        out.retry_host_predicate.add(name="envoy.retry_host_predicates.previous_hosts",
                                     typed_config=packed(PreviousHostsPredicate()))
        out.host_selection_retry_max_attempts = HOST_SELECTION_ATTEMPTS
    return out


def _mirror(m: p.Mirror) -> RouteAction.RequestMirrorPolicy:
    # Parts per million: percents such as 0.5 stay exact.
    share = FractionalPercent(numerator=round(m.percent * 10_000), denominator=FractionalPercent.MILLION)
    return RouteAction.RequestMirrorPolicy(cluster=m.backend, runtime_fraction=RuntimeFractionalPercent(default_value=share))


def _hash_policy(h: p.HashOn) -> RouteAction.HashPolicy:
    out = RouteAction.HashPolicy(terminal=h.terminal)
    if h.type == "header":
        out.header.header_name = h.name
    elif h.type == "cookie":
        out.cookie.name = h.name
        if h.cookie_ttl_s is not None:
            out.cookie.ttl.CopyFrom(seconds(h.cookie_ttl_s))
    elif h.type == "query_parameter":
        out.query_parameter.name = h.name
    else:
        out.connection_properties.source_ip = True
    return out


def _action(route: p.Route) -> RouteAction:
    action = RouteAction(
        timeout=seconds(route.timeout_s),
        request_mirror_policies=[_mirror(m) for m in route.mirrors],
        hash_policy=[_hash_policy(h) for h in route.hash_on],
    )
    if route.idle_timeout_s is not None:
        action.idle_timeout.CopyFrom(seconds(route.idle_timeout_s))
    if route.retries is not None:
        action.retry_policy.CopyFrom(_retry_policy(route.retries))
    if len(route.split) == 1:
        action.cluster = route.split[0].backend
    else:
        action.weighted_clusters.CopyFrom(
            WeightedCluster(
                clusters=[
                    WeightedCluster.ClusterWeight(name=w.backend, weight=UInt32Value(value=w.weight))
                    for w in route.split
                ],
                use_hash_policy=BoolValue(value=True) if route.sticky_split else None,
            )
        )
    return action


def service_routes(name: str, service: p.Service) -> list[Route]:
    """A service's routes, in match order: what one service's route configuration holds."""
    return [Route(name=route_name(name, r.name), match=_match(r.match), route=_action(r)) for r in service.routes]


def virtual_host(name: str, service: p.Service) -> VirtualHost:
    return VirtualHost(name=name, domains=list(service.hosts), routes=service_routes(name, service))


def route_configuration(policy: Policy) -> RouteConfiguration:
    """Every service in one route configuration: one virtual host each."""
    return RouteConfiguration(
        name=EDGE_ROUTES,
        virtual_hosts=[virtual_host(name, service) for name, service in sorted(policy.services.items())],
    )


def service_routes_name(service: str) -> str:
    """The route configuration holding one service's routes, when routes are scoped."""
    return f"{EDGE_ROUTES}/{service}"


def scopable(policy: Policy) -> bool:
    """Whether a scope per host picks the same virtual host as Envoy's own matching would.

    A scope's key is compared exactly with the request's host, while a virtual host's domains
    may be wildcards (`*`, `*.example.com`) that scopes cannot express, and a request whose
    host has no scope finds no route. So routes are scoped only when every host is exact."""
    return bool(policy.services) and all("*" not in h for s in policy.services.values() for h in s.hosts)


def service_route_configuration(name: str, service: p.Service) -> RouteConfiguration:
    return RouteConfiguration(name=service_routes_name(name), virtual_hosts=[virtual_host(name, service)])


class MadeRoutes:
    """Each service's route configuration as last made, with the Service it was made from.

    Policy objects are immutable and a write replaces only the services it changes, so the
    others are found here by identity and not translated again: a one-route write on a
    1,000-route policy translates one service, not a hundred. What it hands out is shared, so
    whoever changes one copies it first (as with_model_routes and with_geo_routes do)."""

    def __init__(self) -> None:
        self._made: dict[str, tuple[p.Service, RouteConfiguration]] = {}
        # The publisher's worker thread and the admin API's previews translate at the same time.
        self._lock = threading.Lock()

    def of(self, policy: Policy) -> list[RouteConfiguration]:
        configs = []
        with self._lock:
            for name, service in sorted(policy.services.items()):
                made = self._made.get(name)
                if made is None or made[0] is not service:
                    made = self._made[name] = (service, service_route_configuration(name, service))
                configs.append(made[1])
            if len(self._made) > len(policy.services):  # services removed: forget them
                self._made = {n: made for n, made in self._made.items() if n in policy.services}
        return configs


def service_route_configurations(policy: Policy, made: MadeRoutes | None = None) -> list[RouteConfiguration]:
    """One route configuration per service, with the service's one virtual host: a change to
    a service's routes sends that service's few kilobytes, not the whole table."""
    if made is not None:
        return made.of(policy)
    return [service_route_configuration(name, service) for name, service in sorted(policy.services.items())]


def scopes(policy: Policy) -> list[ScopedRouteConfiguration]:
    """Per host of each service, the scope that sends its requests to the service's routes.
    Hosts are compared as Envoy compares domains: lower-case (policy hosts are unique that way)."""
    return [
        ScopedRouteConfiguration(
            name=f"{name}/{host.lower()}",
            route_configuration_name=service_routes_name(name),
            key=ScopedRouteConfiguration.Key(fragments=[ScopedRouteConfiguration.Key.Fragment(string_key=host.lower())]),
        )
        for name, service in sorted(policy.services.items())
        for host in service.hosts
    ]
