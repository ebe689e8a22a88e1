"""Data-plane cost of sluice's georoute wasm filter holding a 500,000-prefix table, measured with
wrk through Envoy against Envoy's native ip_tagging filter holding the same prefixes.

Six Envoys (--concurrency 1, direct response, same listener and routes) run side by side:

  none        no HTTP filter but the router
  ip_tagging  envoy.filters.http.ip_tagging with the same prefixes, one tag per country/region
              pair; its LC-trie refuses more than 262,144 ranges per filter, so the table is
              split over several filters in a row (two for 500,000). The HCM
              trusts one X-Forwarded-For hop, so ip_tagging tags the client.
  ip_tag-one  one ip_tagging filter with one of those shares: native's best case, one lookup
  empty-wasm  a proxy-wasm filter with ours' single callback, reading one header: the ceiling for
              any wasm filter (bench/empty_filter.zig)
  ours        georoute.wasm with the table (X-Forwarded-For, 1 trusted hop), setting the
              country and region headers
  ours-tiny   the same filter with a one-prefix table (most clients unmatched: the default
              region, the country header removed): what the table's size costs

Every request carries another client address (a wrk Lua script cycles through 4096 addresses
inside the table's prefixes), so lookups do not all hit one cache line. Before measuring, a
request per Envoy checks that the filter really tagged the client (a /check route matching on
the header each filter sets). wrk -t1 -c16 runs against each in turn, ROUNDS times interleaved;
the median of the rounds is reported: requests/s, p50, p99, Envoy's CPU time per request, and
Envoy's resident memory once ready (what holding the table costs).

  .venv/bin/python bench/georoute_bench.py [--prefixes 500000] [--duration 5] [--rounds 3] [--pin]

Needs wrk (`apt-get install -y wrk`) and the built filter (`make filters`).
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.config.core.v3.address_pb2 import Address, CidrRange, SocketAddress
from envoy.config.core.v3.base_pb2 import AsyncDataSource, DataSource
from envoy.config.listener.v3.listener_components_pb2 import Filter, FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import (
    DirectResponseAction,
    HeaderMatcher,
    Route,
    RouteMatch,
    VirtualHost,
)
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.http.ip_tagging.v3.ip_tagging_pb2 import IPTagging
from envoy.extensions.filters.http.router.v3.router_pb2 import Router
from envoy.extensions.filters.http.wasm.v3.wasm_pb2 import Wasm
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
    HttpFilter,
)
from envoy.extensions.wasm.v3.wasm_pb2 import PluginConfig, VmConfig
from google.protobuf.any_pb2 import Any
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import BoolValue, BytesValue, StringValue, UInt32Value

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import envoy_wrk  # noqa: E402
from envoy_wrk import Envoy, free_port  # noqa: E402
from geo_data import synthetic_rows  # noqa: E402

from controlplane.geotable.compact import Settings, filter_config  # noqa: E402
from controlplane.geotable.table import GeoTable, Row, canonical  # noqa: E402

GEOROUTE_WASM = ROOT / "build" / "filters" / "bin" / "georoute.wasm"
CALLBACKS = ["proxy_on_request_headers"]  # ours', for the empty filter
CLIENTS = 4096


def packed(message: Message) -> Any:
    out = Any()
    out.Pack(message)
    return out


def wasm_filter(path: Path, name: str, configuration: Message) -> HttpFilter:
    return HttpFilter(name="envoy.filters.http.wasm", typed_config=packed(Wasm(config=PluginConfig(
        name=name, root_id=name,
        vm_config=VmConfig(vm_id=name, runtime="envoy.wasm.runtime.v8",
                           code=AsyncDataSource(local=DataSource(filename=str(path)))),
        configuration=packed(configuration),
    ))))


# Envoy's LC-trie refuses more than 262,144 CIDR ranges per ip_tagging filter (its fill factor
# is fixed): a larger table takes several filters in a row, each with an equal share.
IP_TAGGING_RANGES_MAX = 262_144


def ip_tagging_shares(rows: list[Row]) -> list[list[Row]]:
    count = -(-len(rows) // IP_TAGGING_RANGES_MAX)
    size = -(-len(rows) // count)
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def ip_tagging(rows: list[Row]) -> HttpFilter:
    by_tag: dict[str, list[CidrRange]] = {}
    for row in rows:
        network = canonical(row.network)
        by_tag.setdefault(f"{row.label.country}-{row.label.region}", []).append(CidrRange(
            address_prefix=str(network.network_address), prefix_len=UInt32Value(value=network.prefixlen)))
    config = IPTagging(request_type=IPTagging.BOTH,
                       ip_tags=[IPTagging.IPTag(ip_tag_name=t, ip_list=c) for t, c in sorted(by_tag.items())])
    return HttpFilter(name="envoy.filters.http.ip_tagging", typed_config=packed(config))


def bootstrap(port: int, admin: int, http_filters: list[HttpFilter], checked_header: str | None) -> Bootstrap:
    ok = DirectResponseAction(status=200)
    ok.body.inline_string = "ok"
    routes = []
    if checked_header is not None:
        tagged = DirectResponseAction(status=200)
        tagged.body.inline_string = "tagged"
        routes.append(Route(name="check", match=RouteMatch(
            path="/check", headers=[HeaderMatcher(name=checked_header, present_match=True)]), direct_response=tagged))
    routes.append(Route(name="all", match=RouteMatch(prefix="/"), direct_response=ok))
    hcm = HttpConnectionManager(
        stat_prefix="bench",
        use_remote_address=BoolValue(value=True),
        # The load balancer in front is trusted: the client is the X-Forwarded-For entry it sent
        # (for ip_tagging, which tags Envoy's idea of the client; ours reads xff_trusted_hops).
        xff_num_trusted_hops=1,
        route_config=RouteConfiguration(name="bench", virtual_hosts=[VirtualHost(name="all", domains=["*"],
                                                                                 routes=routes)]),
        http_filters=[*http_filters, HttpFilter(name="envoy.filters.http.router", typed_config=packed(Router()))],
    )
    out = Bootstrap()
    out.admin.address.CopyFrom(Address(socket_address=SocketAddress(address="127.0.0.1", port_value=admin)))
    out.static_resources.listeners.append(Listener(
        name="bench",
        address=Address(socket_address=SocketAddress(address="127.0.0.1", port_value=port)),
        filter_chains=[FilterChain(filters=[Filter(name="envoy.filters.network.http_connection_manager",
                                                   typed_config=packed(hcm))])],
    ))
    return out


def rss_mib(pid: int) -> float:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert match is not None
    return int(match.group(1)) / 1024


def georoute_envoy(workdir: Path, name: str, http_filters: list[HttpFilter], checked_header: str | None) -> Envoy:
    port, admin = free_port(), free_port()
    config = bootstrap(port, admin, http_filters, checked_header).SerializeToString()  # binary: parses fast
    return envoy_wrk.bench_envoy(workdir, name, config, listen_port=port, admin_port=admin,
                                 args=["--component-log-level", "wasm:info"])


def check(envoy: Envoy, checked_header: str | None, client: str) -> None:
    """The filter tagged a request from `client`: the /check route matched its header."""
    if checked_header is None:
        return
    request = urllib.request.Request(f"http://127.0.0.1:{envoy.port}/check", headers={"X-Forwarded-For": client})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            body = r.read().decode()
    except urllib.error.HTTPError as e:
        body = f"HTTP {e.code}"
    if body != "tagged":
        raise RuntimeError(f"{envoy.name}: a request from {client} was not tagged ({body!r})")


def clients_script(rows: list[Row], path: Path) -> None:
    """A wrk script sending each request from the next of CLIENTS addresses inside the table."""
    rng = random.Random(11)
    clients = []
    for row in rng.choices(rows, k=CLIENTS):
        network = canonical(row.network)
        offset = rng.randrange(network.num_addresses) if network.num_addresses > 1 else 0
        clients.append(str(network.network_address + offset))
    entries = ",\n".join(f'  "{c}"' for c in clients)
    path.write_text(f"""local clients = {{
{entries}
}}
local i = 0
request = function()
  i = i % #clients + 1
  return wrk.format("GET", "/", {{["X-Forwarded-For"] = clients[i]}})
end
""")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefixes", type=int, default=500_000, help="table size (20%% IPv6)")
    args = envoy_wrk.parse_args(parser)
    if not envoy_wrk.ready_to_run(GEOROUTE_WASM):
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="georoute-bench-"))
    started = time.monotonic()
    rows = synthetic_rows(args.prefixes)
    table = GeoTable.build(rows)
    configuration = filter_config(table, Settings(default_region="default", xff_trusted_hops=1), table.digest)
    print(f"table: {table.v4_count:,} IPv4 + {table.v6_count:,} IPv6 prefixes, {len(table.labels)} labels; "
          f"filter configuration {len(configuration):,} bytes (built in {time.monotonic() - started:.1f} s)",
          file=sys.stderr)
    tiny_table = GeoTable.build(rows[:1])
    tiny = filter_config(tiny_table, Settings(default_region="default", xff_trusted_hops=1), tiny_table.digest)
    script = workdir / "clients.lua"
    clients_script(rows, script)
    shares = ip_tagging_shares(rows)
    cases = {
        "none": ([], None),
        "ip_tagging": ([ip_tagging(share) for share in shares], "x-envoy-ip-tags"),
        # One native filter with one share: native's best case, a single lookup.
        "ip_tag-one": ([ip_tagging(shares[0])], "x-envoy-ip-tags"),
        "empty-wasm": ([wasm_filter(envoy_wrk.build_empty_filter(workdir, CALLBACKS), "empty", StringValue())],
                       None),
        "ours": ([wasm_filter(GEOROUTE_WASM, "sluice_georoute", BytesValue(value=configuration))],
                 "x-sluice-country"),
        "ours-tiny": ([wasm_filter(GEOROUTE_WASM, "sluice_georoute", BytesValue(value=tiny))], "x-sluice-country"),
    }
    envoys = {name: georoute_envoy(workdir, name, filters, header) for name, (filters, header) in cases.items()}
    rss: dict[str, float] = {}
    with envoy_wrk.running(envoys, ready_timeout=120):
        for name, envoy in envoys.items():
            check(envoy, cases[name][1], str(canonical(rows[0].network).network_address))  # in every case's table
            rss[name] = rss_mib(envoy.process.pid)
        median = envoy_wrk.measure(envoys, dict.fromkeys(envoys, script), duration=args.duration,
                                   rounds=args.rounds)
        built = re.search(r"georoute: table .*", envoys["ours"].log_path.read_text())

    title = (f"{args.prefixes:,} prefixes; wrk -t1 -c16, {CLIENTS} client addresses, Envoy --concurrency 1, "
             f"direct response; {envoy_wrk.runs_note(args.rounds, args.duration)}")
    envoy_wrk.report(title, median, f"{'RSS':>9} {'ready':>7}",
                     lambda name, _: f"{rss[name]:>7.0f}MiB {envoys[name].ready_s:>6.1f}s", [
        ("ours / ip_tagging", "ours", "ip_tagging", "(goal >= 0.9x throughput)"),
        ("ours / empty-wasm", "ours", "empty-wasm", "(the lookup and two headers beyond the wasm ceiling)"),
        ("empty-wasm / ip_tagging", "empty-wasm", "ip_tagging", "(the ceiling of any wasm filter)"),
        ("ours / ip_tag-one", "ours", "ip_tag-one",
         f"(against one native filter holding {len(shares[0]):,} of the prefixes)"),
        ("ours / ours-tiny", "ours", "ours-tiny", "(what the table's size costs)"),
        ("ip_tagging / none", "ip_tagging", "none", "(the native filters' own cost)"),
    ])
    print(f"memory held for the table: ours {rss['ours'] - rss['empty-wasm']:+.0f} MiB over "
          f"empty-wasm, ip_tagging {rss['ip_tagging'] - rss['none']:+.0f} MiB over none (RSS)")
    if built:
        print(f"filter log: {built.group(0)}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
