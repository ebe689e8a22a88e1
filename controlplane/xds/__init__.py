"""How snapshots reach proxies: the ADS gRPC server and the per-proxy status it records."""

from controlplane.xds.fleet import Fleet
from controlplane.xds.registry import ProxyRegistry
from controlplane.xds.server import AdsServer
from controlplane.xds.status import ProxyStatus

__all__ = ["AdsServer", "Fleet", "ProxyRegistry", "ProxyStatus"]
