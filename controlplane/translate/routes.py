from envoy.config.route.v3.route_components_pb2 import (
    HeaderMatcher,
    Route,
    RouteAction,
    RouteMatch,
    VirtualHost,
    WeightedCluster,
)
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.type.matcher.v3.regex_pb2 import RegexMatcher
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from google.protobuf.duration_pb2 import Duration
from google.protobuf.wrappers_pb2 import UInt32Value

from controlplane import policy as p

EDGE_ROUTES = "edge"


def route_name(service: str, route: str) -> str:
    """The name Envoy reports for a route (`xds.route_name`); filters key policies on it."""
    return f"{service}/{route}"


def _header(h: p.HeaderMatch) -> HeaderMatcher:
    if h.present is not None:
        return HeaderMatcher(name=h.name, present_match=h.present)
    if h.exact is not None:
        matcher = StringMatcher(exact=h.exact)
    elif h.prefix is not None:
        matcher = StringMatcher(prefix=h.prefix)
    else:
        matcher = StringMatcher(safe_regex=RegexMatcher(regex=h.regex))
    return HeaderMatcher(name=h.name, string_match=matcher)


def _match(m: p.RouteMatch) -> RouteMatch:
    headers = [_header(h) for h in m.headers]
    if m.prefix is not None:
        return RouteMatch(prefix=m.prefix, headers=headers)
    if m.path is not None:
        return RouteMatch(path=m.path, headers=headers)
    return RouteMatch(safe_regex=RegexMatcher(regex=m.regex), headers=headers)


def _action(route: p.Route) -> RouteAction:
    action = RouteAction(timeout=Duration(seconds=int(route.timeout_s), nanos=int(route.timeout_s % 1 * 1e9)))
    if len(route.split) == 1:
        action.cluster = route.split[0].backend
    else:
        action.weighted_clusters.CopyFrom(
            WeightedCluster(
                clusters=[
                    WeightedCluster.ClusterWeight(name=w.backend, weight=UInt32Value(value=w.weight))
                    for w in route.split
                ]
            )
        )
    return action


def route_configuration(policy: p.Policy) -> RouteConfiguration:
    return RouteConfiguration(
        name=EDGE_ROUTES,
        virtual_hosts=[
            VirtualHost(
                name=name,
                domains=list(service.hosts),
                routes=[
                    Route(name=route_name(name, r.name), match=_match(r.match), route=_action(r))
                    for r in service.routes
                ],
            )
            for name, service in sorted(policy.services.items())
        ],
    )
