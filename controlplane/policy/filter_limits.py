"""The bounds the WASM filters enforce on the configuration the control plane sends them, in
one place for the policy model: a policy the admin API accepts must be one the filters accept,
or Envoy would NACK it after it was stored. Each name is the Zig constant it mirrors;
tests/test_filter_limits.py reads the Zig sources and fails on any difference.
"""

from __future__ import annotations

# filters/ratelimit/config.zig
RATELIMIT_POLICIES_MAX = 16  # policies_max
RATELIMIT_ROUTES_MAX = 16  # routes_max
RATELIMIT_ROUTE_COSTS_MAX = 16  # route_costs_max
RATELIMIT_DESCRIPTORS_MAX = 4  # descriptors_max
RATELIMIT_POLICY_NAME_LEN_MAX = 64  # policy_name_len_max
RATELIMIT_ROUTE_LEN_MAX = 128  # route_len_max: an Envoy route name, "service/route"
RATELIMIT_HEADER_NAME_LEN_MAX = 64  # header_name_len_max: key headers and the cost header
RATELIMIT_CONFIG_BYTES_MAX = 64 * 1024  # config_bytes_max: the JSON the control plane renders
RATELIMIT_IPV6_PREFIX_LEN_DEFAULT = 64  # ipv6_prefix_len_default

# filters/ratelimit/gcra.zig
RATE_MIN = 1e-6  # rate_min, tokens per second
RATE_MAX = 1e9  # rate_max
BURST_MAX = 1_000_000_000  # burst_max

# filters/abi/ip.zig (both filters skip at most this many X-Forwarded-For hops)
TRUSTED_HOPS_MAX = 16  # trusted_hops_max

# filters/georoute/config.zig
GEO_HEADER_NAME_LEN_MAX = 64  # header_name_len_max
GEO_REGION_LEN_MAX = 63  # region_len_max
GEO_LABELS_MAX = 1024  # labels_max
