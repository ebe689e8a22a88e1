"""Policy → Envoy resources. A pure function: no store, no stream, no clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

from controlplane.policy import Policy
from controlplane.translate import types
from controlplane.translate.clusters import clusters
from controlplane.translate.endpoints import load_assignments
from controlplane.translate.filters import edge_filters
from controlplane.translate.listeners import edge_listener
from controlplane.translate.routes import route_configuration, route_name

# type URL -> resource name -> resource
Resources = dict[str, dict[str, Message]]


@dataclass(frozen=True)
class ProxyGroup:
    """Proxies that receive identical resources: same role and same listening address."""

    role: str
    listen_address: str
    listen_port: int

    @property
    def key(self) -> str:
        return f"{self.role}@{self.listen_address}:{self.listen_port}"


@dataclass(frozen=True)
class Options:
    """What the translator needs to know besides the policy."""

    filters_dir: Path = Path("build/filters/bin")  # compiled WASM filters, as Envoy will read them


def translate(policy: Policy, group: ProxyGroup, options: Options = Options()) -> Resources:
    http_filters, filter_configs = edge_filters(policy, options.filters_dir)
    listener = edge_listener(group.listen_address, group.listen_port, http_filters)
    routes = route_configuration(policy)
    return {
        types.CLUSTER: {c.name: c for c in clusters(policy)},
        types.ENDPOINT: {a.cluster_name: a for a in load_assignments(policy)},
        types.EXTENSION_CONFIG: {c.name: c for c in filter_configs},
        types.LISTENER: {listener.name: listener},
        types.ROUTE: {routes.name: routes},
    }


def translate_shares(policy: Policy, shares: Mapping[str, float], options: Options = Options()) -> Resources:
    """What differs for one proxy holding `shares` of the global rate limits: its filter configs."""
    _, filter_configs = edge_filters(policy, options.filters_dir, shares)
    return {types.EXTENSION_CONFIG: {c.name: c for c in filter_configs}}


__all__ = ["Options", "ProxyGroup", "Resources", "route_name", "translate", "translate_shares", "types"]
