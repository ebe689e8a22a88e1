"""`sluice controlplane`: the store, translator, snapshot cache, ADS server and admin API, wired."""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import ipaddress
import logging
import signal
import time

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge
from pydantic import ValidationError

from controlplane.admin import AdminApi
from controlplane.auth import Authenticator
from controlplane.auth.tls import admin_ssl_context, xds_ssl_context
from controlplane.cache import SnapshotCache
from controlplane.canary import CanaryController
from controlplane.canary.api import routes as canary_routes
from controlplane.controller.publisher import Publisher
from controlplane.geo.api import routes as geo_routes
from controlplane.geo.collector import run as collect_geo_tables
from controlplane.geo.tables import GeoTables, PublishingStore
from controlplane.quota.keeper import UsageKeeper, file_clock
from controlplane.readiness import Readiness
from controlplane.replica import Coordination, run_while_held
from controlplane.settings import ControlPlaneSettings
from controlplane.shadow import Comparator
from controlplane.store import Revision, StoreUnavailable, open_store, redacted
from controlplane.supervision import Supervisor
from controlplane.translate import MadeRoutes, Options, ProxyGroup, translate, translate_shares
from controlplane.ui.console import install as install_console
from controlplane.xds import AdsServer, Fleet, GrpcServer

log = logging.getLogger("sluice.controlplane")

CANARY_LEASE = "canary-controller"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def serve(settings: ControlPlaneSettings, stop: asyncio.Event) -> None:
    store = await open_store(settings.store, poll_s=settings.store_poll_s)
    coordination = Coordination.for_store(settings.store, settings.replica_id, lease_ttl_s=settings.lease_ttl_s)
    authenticator = Authenticator(store, settings.auth, refresh_s=settings.store_poll_s)
    await authenticator.load()
    registry = CollectorRegistry()
    fleet = Fleet(registry)
    published = Gauge("sluice_published_revision", "Policy revision in the snapshots", registry=registry)
    cache = SnapshotCache()
    geo_tables = GeoTables(store)
    options = Options(filters_dir=settings.filters_dir, geo_tables=geo_tables.get, made_routes=MadeRoutes())

    def on_publish(revision: Revision) -> None:
        published.set(revision.number)
        quota.rebalance()

    publisher = Publisher(
        PublishingStore(store, geo_tables), cache, functools.partial(translate, options=options),
        lambda policy, shares, allowances: translate_shares(policy, shares, options, allowances),
        quiet_s=settings.push_quiet_s, max_delay_s=settings.push_max_delay_s,
        on_publish=on_publish,
    )
    default_group = ProxyGroup("edge", settings.edge_listen_address, settings.edge_listen_port)
    ads = AdsServer(cache, fleet, default_group)
    # Only the replica holding the quota lease balances; every replica applies its shares.
    quota = coordination.quota(fleet.connected, lambda: None if publisher.revision is None else publisher.revision.policy,
                               publisher.set_shares, interval_s=settings.quota_interval_s)

    server = GrpcServer(ads.methods())
    xds_tls = (None if settings.tls_cert is None or settings.tls_key is None
               else xds_ssl_context(settings.tls_cert, settings.tls_key, settings.client_ca))
    xds_port = await server.start(settings.xds_host, settings.xds_port, xds_tls)

    # The canary controller sums every edge Envoy's counters, whichever replica it is connected to.
    everyone = coordination.every_proxy(fleet.connected, interval_s=settings.quota_interval_s)
    # Every replica counts its own proxies' usage into the store and gives them their part.
    budgets = UsageKeeper(fleet.connected, lambda: None if publisher.revision is None else publisher.revision.policy,
                          store, publisher.set_allowances, everywhere=everyone.proxies,
                          interval_s=settings.usage_interval_s,
                          clock=time.time if settings.clock_file is None else file_clock(settings.clock_file))
    comparator = Comparator(max_inflight=settings.shadow_max_inflight, max_body_bytes=settings.shadow_max_body_bytes,
                            timeout_s=settings.shadow_timeout_s)
    await comparator.start(settings.shadow_host, settings.shadow_port)
    canaries = CanaryController(store, everyone.edge_admin_addresses, comparator=comparator,
                                comparator_address=settings.shadow_advertised())
    canary_lease = coordination.lease(CANARY_LEASE)  # canaries advance on one replica at a time
    supervisor = Supervisor(registry)
    admin = AdminApi(store, fleet, registry, authenticator=authenticator, options=options,
                     replica=lambda: {"id": coordination.replica, "shared": coordination.shared,
                                      "leases": coordination.leases()},
                     readiness=Readiness(store, publisher, supervisor).check).app()
    admin.add_routes(canary_routes(store, canaries))
    admin.add_routes(geo_routes(store, fleet.convergence.revision_written, geo_tables))
    install_console(admin, store, fleet.connected)  # /ui/, behind the same auth middleware
    runner = web.AppRunner(admin, access_log=None)
    await runner.setup()
    ssl_context = (None if settings.tls_cert is None or settings.tls_key is None
                   else admin_ssl_context(settings.tls_cert, settings.tls_key))
    site = web.TCPSite(runner, settings.admin_host, settings.admin_port, ssl_context=ssl_context)
    await site.start()
    for name, work in (("publisher", publisher.run), ("quota", quota.run), ("token budgets", budgets.run),
                       ("canary", functools.partial(run_while_held, canary_lease, canaries.run)),
                       ("leases", coordination.run), ("tokens", authenticator.run)):
        supervisor.start(name, work)
    if coordination.shared:
        supervisor.start("proxy directory", everyone.run)
    supervisor.start("geo table collector", functools.partial(collect_geo_tables, store))
    current = await store.current()
    log.info("shadow comparator on %s:%d", *(comparator.address or ("?", 0)))
    log.info("replica %s: xDS on %s:%d (%s), admin API on %s://%s:%d, store %s at revision %d",
             settings.replica_id, settings.xds_host, xds_port,
             "mutual TLS" if settings.client_ca else "TLS" if ssl_context else "plaintext",
             "https" if ssl_context else "http", settings.admin_host, settings.admin_port,
             redacted(settings.store), current.number)
    if not _loopback(settings.admin_host) and not authenticator.enforcing:
        log.warning("the admin API listens on %s without tokens: %s", settings.admin_host,
                    "anyone who reaches it can change policy (--auth off)" if settings.auth == "off"
                    else "only loopback clients are served until a token exists (sluice token create)")
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await supervisor.stop()
        await coordination.close()  # hands the leases over at once
        await server.stop()
        await runner.cleanup()
        await comparator.close()
        await store.close()


def parser() -> argparse.ArgumentParser:
    d = ControlPlaneSettings()
    p = argparse.ArgumentParser(prog="sluice controlplane", description="Run the xDS control plane and admin API.")
    p.add_argument("--xds-host", default=d.xds_host, help=f"xDS gRPC address (default {d.xds_host})")
    p.add_argument("--xds-port", type=int, default=d.xds_port, help=f"xDS gRPC port (default {d.xds_port})")
    p.add_argument("--admin-host", default=d.admin_host, help=f"admin API address (default {d.admin_host})")
    p.add_argument("--admin-port", type=int, default=d.admin_port, help=f"admin API port (default {d.admin_port})")
    p.add_argument("--store", default=d.store, help=f"policy store URL (default {d.store})")
    p.add_argument("--filters-dir", default=str(d.filters_dir), help=f"compiled WASM filters (default {d.filters_dir})")
    p.add_argument("--log-level", default=d.log_level, help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("--replica-id", default=None, help="this replica's name in leases and logs (default HOST-PID)")
    p.add_argument("--auth", choices=["auto", "on", "off"], default=d.auth,
                   help="admin API tokens: auto (required once one exists; loopback only before), on, off "
                        f"(default {d.auth})")
    p.add_argument("--tls-cert", default=None, help="PEM certificate: serve the admin API over HTTPS and xDS over TLS")
    p.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    p.add_argument("--client-ca", default=None,
                   help="PEM CA: Envoys must present a client certificate it signed (mutual TLS for xDS)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=(args.log_level or "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = ControlPlaneSettings(**{k: v for k, v in vars(args).items() if v is not None})
    except ValidationError as exc:
        log.error("invalid settings: %s", "; ".join(e["msg"] for e in exc.errors()))
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    # Many objects live as long as the process (modules) or a proxy's stream (its session):
    # with Python's default thresholds a push to a large fleet spends a third of its CPU
    # re-scanning them (bench/xds_scale.py). Startup objects leave the collector's view, and
    # collections run less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        asyncio.run(run())
    except ValueError as exc:  # bad settings such as an unsupported store URL
        log.error("%s", exc)
        return 2
    except StoreUnavailable as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
