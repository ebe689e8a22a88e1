"""`sluice controlplane`: the store, translator, snapshot cache, ADS server and admin API, wired."""

from __future__ import annotations

import argparse
import functools
import asyncio
import contextlib
import logging
import signal

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from controlplane.admin import AdminApi
from controlplane.cache import SnapshotCache
from controlplane.cache.publisher import Publisher
from controlplane.settings import ControlPlaneSettings
from controlplane.store import open_store


from controlplane.canary import CanaryController
from controlplane.canary.api import routes as canary_routes
from controlplane.quota.balancer import Balancer
from controlplane.translate import Options, ProxyGroup, translate, translate_shares
from controlplane.xds import AdsServer, Fleet

log = logging.getLogger("sluice.controlplane")


async def serve(settings: ControlPlaneSettings, stop: asyncio.Event) -> None:
    store = await open_store(settings.store)
    registry = CollectorRegistry()
    fleet = Fleet(registry)
    published = Gauge("sluice_published_revision", "Policy revision in the snapshots", registry=registry)
    cache = SnapshotCache()
    options = Options(filters_dir=settings.filters_dir)
    publisher = Publisher(
        store, cache, functools.partial(translate, options=options),
        lambda policy, shares: translate_shares(policy, shares, options),
        quiet_s=settings.push_quiet_s, max_delay_s=settings.push_max_delay_s,
        on_publish=lambda r: (published.set(r.number), balancer.rebalance()),
    )
    default_group = ProxyGroup("edge", settings.edge_listen_address, settings.edge_listen_port)
    ads = AdsServer(cache, publisher, fleet, default_group)
    balancer = Balancer(fleet, lambda: None if publisher.revision is None else publisher.revision.policy,
                        publisher.set_shares, interval_s=settings.quota_interval_s)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((ads.handler(),))
    xds_port = server.add_insecure_port(f"{settings.xds_host}:{settings.xds_port}")
    await server.start()

    canaries = CanaryController(store, lambda: [p.admin_address for p in fleet.proxies()
                                                 if p.cluster == "edge" and p.admin_address])
    admin = AdminApi(store, fleet, registry).app()
    admin.add_routes(canary_routes(store, canaries))
    runner = web.AppRunner(admin, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.admin_host, settings.admin_port)
    await site.start()
    publishing = asyncio.create_task(publisher.run())
    balancing = asyncio.create_task(balancer.run())
    canarying = asyncio.create_task(canaries.run())
    current = await store.current()
    log.info("xDS on %s:%d, admin API on http://%s:%d, store %s at revision %d",
             settings.xds_host, xds_port, settings.admin_host, settings.admin_port, settings.store, current.number)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        for task in (publishing, balancing, canarying):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.stop(grace=1.0)
        await runner.cleanup()
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = ControlPlaneSettings(**{k: v for k, v in vars(args).items() if v is not None})
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    try:
        asyncio.run(run())
    except ValueError as exc:  # bad settings such as an unsupported store URL
        log.error("%s", exc)
        return 2
    return 0
