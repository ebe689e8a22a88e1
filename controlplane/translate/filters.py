"""The WASM filters, as ECDS resources: a config change reaches the next request with no
listener drain, because the listener only names the filter and the config comes separately."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from envoy.config.core.v3.base_pb2 import AsyncDataSource, DataSource
from envoy.config.core.v3.config_source_pb2 import ExtensionConfigSource
from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig
from envoy.extensions.filters.http.wasm.v3.wasm_pb2 import Wasm
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import HttpFilter
from envoy.extensions.wasm.v3.wasm_pb2 import PluginConfig, VmConfig
from google.protobuf.any_pb2 import Any
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import BoolValue, BytesValue, StringValue

from controlplane.policy import Policy
from controlplane.policy.filter_limits import RATE_MIN
from controlplane.translate.clusters import PICKER_UPSTREAM, WASM_TYPE
from controlplane.translate.geo import TableLookup, georoute_configuration
from controlplane.translate.llm import Allowance, llm_config
from controlplane.translate.picker import picker_config, picker_upstream_config, reads_prompts
from controlplane.translate.sources import ads

GEOROUTE = "sluice.georoute"
LLM = "sluice.llm"
RATELIMIT = "sluice.ratelimit"
PICKER = "sluice.picker"


def _packed(message: Message) -> Any:
    out = Any()
    out.Pack(message)
    return out


def discovered(name: str) -> HttpFilter:
    """The listener's reference to a filter whose config arrives by ECDS."""
    return HttpFilter(name=name, config_discovery=ExtensionConfigSource(config_source=ads(), type_urls=[WASM_TYPE]))


def wasm_filter(name: str, module: Path, plugin: str,
                configuration: dict[str, object] | bytes, reads_request_body: bool = False) -> TypedExtensionConfig:
    """`configuration`: JSON for the filter, or bytes it reads as they are (Envoy hands a
    BytesValue's bytes to the VM unchanged). `reads_request_body`: the filter holds the headers
    until it has read the body (without it Envoy turns the filter's pause into "stop all",
    which holds the body back from the filter itself)."""
    packed_configuration = _packed(BytesValue(value=configuration) if isinstance(configuration, bytes) else
                                   StringValue(value=json.dumps(configuration, sort_keys=True, separators=(",", ":"))))
    config = Wasm(config=PluginConfig(
        name=plugin,
        root_id=plugin,
        # The same vm_id and code keep the same VM across config changes, and with it the
        # shared data (the token buckets): a new limit does not reset every client.
        vm_config=VmConfig(vm_id=f"sluice-{plugin}", runtime="envoy.wasm.runtime.v8",
                           code=AsyncDataSource(local=DataSource(filename=str(module)))),
        configuration=packed_configuration,
        fail_open=False,
        allow_on_headers_stop_iteration=BoolValue(value=True) if reads_request_body else None,
    ))
    return TypedExtensionConfig(name=name, typed_config=_packed(config))


def _share(rate: float, burst: int, fraction: float | None) -> tuple[float, int]:
    if fraction is None:
        return rate, burst
    # Each proxy keeps at least one token, or its clients could never be admitted, and at least
    # the filter's lowest rate, however many proxies share the limit.
    return max(RATE_MIN, rate * fraction), max(1, math.floor(burst * fraction))


def ratelimit_config(policy: Policy, shares: Mapping[str, float] | None = None) -> dict[str, object]:
    """The filter's plugin configuration (its schema is documented in filters/ratelimit/config.zig).

    `shares` maps a global limit's name to this proxy's fraction of it; a global limit without
    a share is enforced whole (until the proxy's first share is computed, at connect).
    """
    shares = shares or {}
    return {
        "xff_trusted_hops": policy.edge.xff_trusted_hops,
        "policies": [
            {
                "name": name,
                "routes": policy.routes_of(limit.service, limit.routes),
                **dict(zip(("rate", "burst"), _share(
                    limit.rate, limit.burst, shares.get(name) if limit.scope == "global" else None), strict=True)),
                "key": [{"type": k.type, **({"name": k.name.lower()} if k.name else {})} for k in limit.key],
                **({"cost_header": limit.cost_header.lower()} if limit.cost_header else {}),
                "route_costs": {f"{limit.service}/{r}": c for r, c in sorted(limit.route_costs.items())},
                "shadow": limit.shadow,
                "ipv6_prefix_len": limit.ipv6_prefix_len,
            }
            for name, limit in sorted(policy.ratelimits.items())
        ],
    }


def _no_tables(_: str) -> None:
    return None


@lru_cache(maxsize=4)
def _georoute(module: Path, configuration: bytes) -> TypedExtensionConfig:
    return wasm_filter(GEOROUTE, module, "georoute", configuration)


def edge_filters(policy: Policy, filters_dir: Path, shares: Mapping[str, float] | None = None,
                 geo_tables: TableLookup = _no_tables, allowances: Mapping[str, Allowance] | None = None,
                 ) -> tuple[list[HttpFilter], list[TypedExtensionConfig]]:
    """The edge listener's filter chain (before the router) and the configs it discovers:
    georoute first, so rate limits and routes see the client's region; then llm, so requests
    are rate limited before their bodies are read; the picker last."""
    chain: list[HttpFilter] = []
    configs: list[TypedExtensionConfig] = []
    geo = policy.geo.get("geo")
    if geo is not None:
        chain.append(discovered(GEOROUTE))
        # Without its table in memory the filter gets no config: the consistency check then
        # refuses the snapshot and proxies keep the previous one.
        configuration = georoute_configuration(policy, geo, geo_tables)
        if configuration is not None:
            configs.append(_georoute(filters_dir.resolve() / "georoute.wasm", configuration))
    if policy.ratelimits:
        module = filters_dir.resolve() / "ratelimit.wasm"
        chain.append(discovered(RATELIMIT))
        configs.append(wasm_filter(RATELIMIT, module, "ratelimit", ratelimit_config(policy, shares)))
    if policy.models:
        chain.append(discovered(LLM))
        configs.append(wasm_filter(LLM, filters_dir.resolve() / "llm.wasm", "llm", llm_config(policy, allowances),
                                   reads_request_body=True))
    # After rate limits (a shed request has spent its tokens, as any refused one) and after llm:
    # a request is authenticated before it is shed, and sheds on its key's priority, which llm
    # sets (a shed request's token reservation is refunded: its answer carries no usage).
    picker = filters_dir.resolve() / "picker.wasm"
    if (picking := picker_config(policy)) is not None:
        chain.append(discovered(PICKER))
        configs.append(wasm_filter(PICKER, picker, "picker", picking, reads_request_body=reads_prompts(picking)))
    if (recording := picker_upstream_config(policy)) is not None:
        # Named by the least_loaded clusters' upstream filters (translate/clusters.py), not the chain.
        configs.append(wasm_filter(PICKER_UPSTREAM, picker, "picker", recording))
    return chain, configs
