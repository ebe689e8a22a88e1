"""How snapshots reach proxies: the ADS gRPC server and the per-proxy status it records."""

from controlplane.xds.server import AdsServer
from controlplane.xds.status import Fleet, ProxyStatus

__all__ = ["AdsServer", "Fleet", "ProxyStatus"]
