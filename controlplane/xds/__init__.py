"""How snapshots reach proxies: the ADS service, the gRPC server it runs on, and the per-proxy status it records."""

from controlplane.xds.fleet import Fleet
from controlplane.xds.registry import ProxyRegistry
from controlplane.xds.server import AdsServer
from controlplane.xds.status import ProxyStatus
from controlplane.xds.transport import GrpcServer

__all__ = ["AdsServer", "Fleet", "GrpcServer", "ProxyRegistry", "ProxyStatus"]
