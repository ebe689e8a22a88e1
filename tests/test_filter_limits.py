"""The policy model's copy of the filters' bounds (controlplane/policy/filter_limits.py) is the
filters' own: each constant is read from the Zig source it names and compared."""

from __future__ import annotations

import re

import pytest
from harness import ROOT

from controlplane.policy import filter_limits

ZIG = {
    "filters/ratelimit/config.zig": {
        "policies_max": "RATELIMIT_POLICIES_MAX", "routes_max": "RATELIMIT_ROUTES_MAX",
        "route_costs_max": "RATELIMIT_ROUTE_COSTS_MAX", "descriptors_max": "RATELIMIT_DESCRIPTORS_MAX",
        "policy_name_len_max": "RATELIMIT_POLICY_NAME_LEN_MAX", "route_len_max": "RATELIMIT_ROUTE_LEN_MAX",
        "header_name_len_max": "RATELIMIT_HEADER_NAME_LEN_MAX", "config_bytes_max": "RATELIMIT_CONFIG_BYTES_MAX",
        "ipv6_prefix_len_default": "RATELIMIT_IPV6_PREFIX_LEN_DEFAULT",
    },
    "filters/ratelimit/gcra.zig": {"rate_min": "RATE_MIN", "rate_max": "RATE_MAX", "burst_max": "BURST_MAX"},
    "filters/abi/ip.zig": {"trusted_hops_max": "TRUSTED_HOPS_MAX"},
    "filters/georoute/config.zig": {"header_name_len_max": "GEO_HEADER_NAME_LEN_MAX",
                                    "region_len_max": "GEO_REGION_LEN_MAX", "labels_max": "GEO_LABELS_MAX"},
}


def zig_constant(source: str, name: str) -> float:
    """`pub const name[: type] = EXPR;` where EXPR is a number, `a * b` or `1 << n`."""
    match = re.search(rf"^pub const {name}(?::\s*\w+)?\s*=\s*([^;]+);", source, re.MULTILINE)
    assert match is not None, f"no `pub const {name}` in the source"
    expr = match.group(1).replace("_", "")
    assert re.fullmatch(r"[0-9e.\-\s*<]+", expr), f"{name} = {expr}: not a plain number"
    return float(eval(expr))  # noqa: S307 - digits and * or << only, checked above


@pytest.mark.parametrize("path", sorted(ZIG))
def test_the_policy_model_reads_the_filters_bounds(path: str) -> None:
    source = (ROOT / path).read_text()
    for zig_name, python_name in ZIG[path].items():
        assert getattr(filter_limits, python_name) == zig_constant(source, zig_name), (path, zig_name)
