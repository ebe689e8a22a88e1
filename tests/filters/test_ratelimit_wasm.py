"""The compiled ratelimit.wasm in the wasmtime proxy-wasm host emulator (proxywasm_host.py)."""

from __future__ import annotations

import json
import time

import pytest
from proxywasm_host import (
    CONTINUE,
    PAUSE,
    PEER,
    Clock,
    Metrics,
    ProxyWasmHost,
    SharedData,
    forwarded_for,
    make_host,
    wasm_path,
)

FILTER = "ratelimit"  # the `wasm` fixture (conftest.py)
PREFIX = "sluice_ratelimit"
SET_COUNT = 4096  # filters/ratelimit/slots.zig
SLOT_COUNT = SET_COUNT * 4
KEY_COUNT = SET_COUNT + 2  # the sets, the "rl/ready" marker and the hashing secret "rl/secret"


def policy(name: str = "per-client", rate: float = 1.0, burst: int = 5, **extra) -> dict:
    return {"name": name, "rate": rate, "burst": burst, "key": [{"type": "client_ip"}], **extra}


def config(*policies: dict, hops: int = 1) -> str:
    return json.dumps({"xff_trusted_hops": hops, "policies": list(policies)})


def send(host: ProxyWasmHost, client: str = "192.0.2.10", *, xff: str | None = None, route: str = "r1",
         headers: dict | None = None, peer: str = PEER):
    """A request as the filter sees it behind use_remote_address: Envoy appended the peer."""
    h = {"x-forwarded-for": forwarded_for(xff if xff is not None else client, peer), **(headers or {})}
    return host.http_request(h, route=route, peer=peer)


def admitted(results) -> int:
    return sum(1 for r in results if r.local_response is None)


def metric(host: ProxyWasmHost, policy_name: str, counter: str) -> int:
    return host.metric(f"{PREFIX}.{policy_name}.{counter}")


def test_missing_wasm_message_says_make_filters():
    with pytest.raises(FileNotFoundError, match="make filters"):
        wasm_path("no-such-filter")


def test_exports_only_the_callbacks_it_needs(wasm):
    host = ProxyWasmHost(wasm)
    functions = {name for name in host.exports if name != "memory"}
    assert functions == {
        "proxy_abi_version_0_2_1", "proxy_on_memory_allocate", "proxy_on_vm_start",
        "proxy_on_configure", "proxy_on_request_headers", "proxy_on_response_headers",
    }


def test_burst_of_b_plus_n_admits_exactly_b(wasm):
    host = make_host(wasm, config(policy(burst=5)))
    results = [send(host) for _ in range(12)]
    assert [r.local_response is None for r in results] == [True] * 5 + [False] * 7
    assert all(r.request_action == PAUSE for r in results[5:])
    assert all(r.request_action == CONTINUE for r in results[:5])
    assert (metric(host, "per-client", "requests"), metric(host, "per-client", "allowed"),
            metric(host, "per-client", "limited")) == (12, 5, 7)


def test_refill_after_t_seconds_admits_rate_times_t(wasm):
    clock = Clock()
    host = make_host(wasm, config(policy(rate=2.0, burst=4)), clock=clock)
    assert admitted(send(host) for _ in range(10)) == 4
    clock.advance(1.5)  # 3 tokens
    assert admitted(send(host) for _ in range(10)) == 3
    clock.advance(0.25)  # half a token
    assert admitted(send(host) for _ in range(10)) == 0
    clock.advance(0.25)
    assert admitted(send(host) for _ in range(10)) == 1
    clock.advance(3600)  # idle: full, capped at the burst
    assert admitted(send(host) for _ in range(10)) == 4


def test_clients_are_independent(wasm):
    host = make_host(wasm, config(policy(burst=2)))
    assert admitted(send(host, "192.0.2.10") for _ in range(4)) == 2
    assert admitted(send(host, "192.0.2.11") for _ in range(4)) == 2
    assert admitted(send(host, "2001:db8::1") for _ in range(4)) == 2
    assert admitted(send(host, "192.0.2.10") for _ in range(4)) == 0


def test_xff_entries_added_to_the_left_cannot_evade(wasm):
    host = make_host(wasm, config(policy(burst=3), hops=1))
    results = [send(host, xff=f"6.6.6.{i}, 192.0.2.10") for i in range(3)]
    results += [send(host, xff="192.0.2.10"), send(host, xff="junk, 192.0.2.10")]
    assert admitted(results) == 3
    # The client is the entry the trusted LB appended; the same client from another LB hop too.
    assert send(host, xff="192.0.2.10", peer="127.0.0.2:1").local_response is not None
    # Textual variants of one address are one client.
    assert send(host, xff="192.0.2.10:5555").local_response is not None
    assert send(host, xff="::ffff:192.0.2.10").local_response is not None


def test_xff_trusted_hops_zero_uses_the_peer_address(wasm):
    host = make_host(wasm, config(policy(burst=2), hops=0))
    assert admitted(send(host, xff=f"192.0.2.{i}") for i in range(5)) == 2  # XFF ignored
    assert admitted(send(host, peer="[2001:db8::7]:443") for _ in range(3)) == 2  # another peer


def test_xff_with_too_few_entries_or_junk_falls_back_to_the_peer(wasm):
    host = make_host(wasm, config(policy(burst=2), hops=2))
    # Only the peer's own entry and one more: fewer than hops+1 entries -> peer.
    results = [send(host, xff=f"192.0.2.{i}") for i in range(3)]
    assert admitted(results) == 2
    # Enough entries, but the selected one is not an IP: the peer (same bucket as above).
    assert send(host, xff="not-an-ip, 10.0.0.1").local_response is not None
    # Enough entries and a valid IP: its own bucket.
    assert send(host, xff="198.51.100.1, 10.0.0.1").local_response is None


def test_header_key(wasm):
    p = policy(burst=2, key=[{"type": "header", "name": "X-Api-Key"}])
    host = make_host(wasm, config(p))
    assert admitted(send(host, f"192.0.2.{i}", headers={"x-api-key": "alpha"}) for i in range(4)) == 2
    assert admitted(send(host, headers={"x-api-key": "beta"}) for _ in range(4)) == 2
    # A missing header is the empty value: all requests without it share one bucket.
    assert admitted(send(host, f"192.0.2.{i}") for i in range(4)) == 2
    assert admitted(send(host, headers={"x-api-key": ""}) for _ in range(2)) == 0


def test_combined_key_and_route_descriptor(wasm):
    p = policy(burst=1, key=[{"type": "client_ip"}, {"type": "header", "name": "x-api-key"}, {"type": "route"}])
    host = make_host(wasm, config(p))
    keys = [("192.0.2.1", "a", "r1"), ("192.0.2.2", "a", "r1"), ("192.0.2.1", "b", "r1"), ("192.0.2.1", "a", "r2")]
    assert all(send(host, c, headers={"x-api-key": k}, route=r).local_response is None for c, k, r in keys)
    assert all(send(host, c, headers={"x-api-key": k}, route=r).local_response is not None for c, k, r in keys)


def test_cost_header_and_route_costs(wasm):
    p = policy(burst=5, cost_header="x-sluice-cost", route_costs={"r2": 2})
    host = make_host(wasm, config(p))
    cost = lambda c, route="r1": send(host, "192.0.2.1", headers={"x-sluice-cost": c}, route=route)  # noqa: E731
    assert cost("3").local_response is None
    assert cost("3").local_response is not None  # 2 left
    assert cost("2").local_response is None
    # Route cost 2 applies without (valid) header; invalid values fall back to it.
    host2 = make_host(wasm, config(p))
    results = [send(host2, "192.0.2.2", route="r2", headers={"x-sluice-cost": bad})
               for bad in ("0", "-1", "abc", "")]
    assert [r.local_response is None for r in results] == [True, True, False, False]
    # Larger than the burst: clamped to the burst (drains a full bucket, never inadmissible).
    host3 = make_host(wasm, config(p))
    assert send(host3, "192.0.2.3", headers={"x-sluice-cost": "1000"}).local_response is None
    assert send(host3, "192.0.2.3").local_response is not None
    r = send(host3, "192.0.2.4", headers={"x-sluice-cost": "2"})
    assert r.response_header("ratelimit") == '"per-client";r=3;t=2'


def test_routes_select_policies(wasm):
    host = make_host(wasm, config(policy(burst=1, routes=["r1"])))
    assert admitted(send(host, route="r1") for _ in range(3)) == 1
    others = [send(host, route="r2") for _ in range(3)]
    assert admitted(others) == 3
    assert all(r.response_header("ratelimit") is None for r in others)
    assert metric(host, "per-client", "requests") == 3


def test_429_headers_and_json_body(wasm):
    host = make_host(wasm, config(policy(rate=0.5, burst=2)))
    first = send(host)
    assert first.response_header("ratelimit") == '"per-client";r=1;t=2'
    assert first.response_header("ratelimit-policy") is None  # static: sent with 429s only
    assert send(host).response_header("ratelimit") == '"per-client";r=0;t=4'
    rejected = send(host).local_response
    assert rejected.status == 429
    assert rejected.grpc_status == -1
    assert json.loads(rejected.body) == {"error": "rate limited", "policy": "per-client", "retry_after_s": 2}
    assert rejected.header("retry-after") == "2"
    assert rejected.header("ratelimit-policy") == '"per-client";q=2;w=4'
    assert rejected.header("ratelimit") == '"per-client";r=0;t=2'
    assert rejected.header("content-type") == "application/json"


def test_grpc_requests_get_resource_exhausted(wasm):
    host = make_host(wasm, config(policy(burst=1)))
    grpc = {"content-type": "application/grpc+proto"}
    assert send(host, headers=grpc).local_response is None
    rejected = send(host, headers=grpc).local_response
    assert rejected.grpc_status == 8
    assert rejected.header("content-type") is None  # Envoy writes the gRPC reply's own
    assert rejected.header("retry-after") == "1"
    assert b"per-client" in rejected.body


def test_shadow_mode_counts_but_never_rejects(wasm):
    host = make_host(wasm, config(policy(burst=2, shadow=True)))
    results = [send(host) for _ in range(5)]
    assert admitted(results) == 5
    assert all(r.response_header("ratelimit") is None for r in results)  # invisible to clients
    assert (metric(host, "per-client", "allowed"), metric(host, "per-client", "shadow_limited"),
            metric(host, "per-client", "limited"), metric(host, "per-client", "requests")) == (2, 3, 0, 5)


def test_enforcing_and_shadow_policies_together(wasm):
    host = make_host(wasm, config(policy("enforce", burst=3), policy("trial", burst=1, shadow=True)))
    results = [send(host) for _ in range(5)]
    assert admitted(results) == 3
    assert all(r.response_header("ratelimit").startswith('"enforce"') for r in results[:3])
    assert (metric(host, "trial", "allowed"), metric(host, "trial", "shadow_limited")) == (1, 2)
    assert metric(host, "trial", "requests") == 5  # demand: every matching request


def test_tokens_are_spent_only_when_every_enforcing_policy_admits(wasm):
    per_client = policy("per-client", burst=3)
    global_limit = {"name": "global", "rate": 0.001, "burst": 1, "key": []}
    host = make_host(wasm, config(per_client, global_limit))
    assert send(host, "192.0.2.1").local_response is None
    rejected = send(host, "192.0.2.1").local_response
    assert json.loads(rejected.body)["policy"] == "global"
    assert send(host, "192.0.2.1").local_response is not None
    assert metric(host, "global", "limited") == 2 and metric(host, "per-client", "limited") == 0
    # Drop the global policy (same VM, same shared data): per-client kept its state, and the
    # two rejected requests were refunded, so exactly 2 of its 3 tokens remain.
    assert host.configure(config(per_client))
    assert admitted(send(host, "192.0.2.1") for _ in range(5)) == 2


def test_ratelimit_header_reports_the_policy_with_fewest_tokens(wasm):
    host = make_host(wasm, config(policy("wide", burst=10), policy("narrow", burst=3)))
    assert send(host).response_header("ratelimit") == '"narrow";r=2;t=1'


def test_invalid_configuration_is_refused_and_the_previous_one_stays(wasm):
    host = make_host(wasm, config(policy(burst=1)))
    invalid = [
        "",
        "not json",
        json.dumps({"policies": [policy(rate=0)]}),
        json.dumps({"policies": [policy(burst="5")]}),
        json.dumps({"policies": [policy(name="has space")]}),
        json.dumps({"policies": [policy(), policy()]}),
        json.dumps({"policies": [policy(key=[{"type": "header", "name": "x-" + "k" * 98}])]}),
        json.dumps({"policies": [policy(route_costs={"r1": 6})]}),
        json.dumps({"policies": [policy()], "typo": 1}),
        json.dumps({"xff_trusted_hops": 99, "policies": []}),
        json.dumps({"policies": [policy(name=f"p{i}") for i in range(17)]}),
    ]
    for cfg in invalid:
        host.logs.clear()
        assert not host.configure(cfg), cfg
        errors = host.log_messages("error")
        assert errors and errors[0].startswith("ratelimit: rejected plugin configuration: "), (cfg, host.logs)
    assert admitted(send(host) for _ in range(3)) == 1  # still burst 1


def test_configuration_change_takes_effect_and_keeps_buckets(wasm):
    host = make_host(wasm, config(policy(burst=2)))
    assert admitted(send(host) for _ in range(3)) == 2
    defined = host.calls["proxy_define_metric"]
    assert host.configure(config(policy(burst=5)))  # same name: same buckets, larger burst
    assert host.calls["proxy_define_metric"] == defined  # and the same metrics
    assert admitted(send(host) for _ in range(10)) == 3
    assert metric(host, "per-client", "requests") == 13
    assert host.configure(config(policy("renamed", burst=2)))  # a new policy: fresh buckets
    assert admitted(send(host) for _ in range(3)) == 2
    assert host.configure(config())  # no policies: nothing limited
    assert admitted(send(host) for _ in range(3)) == 3


def test_workers_share_buckets(wasm):
    shared, metrics, clock = SharedData(), Metrics(), Clock()
    workers = [make_host(wasm, config(policy(burst=7)), shared_data=shared, metrics=metrics, clock=clock)
               for _ in range(3)]
    # The first VM created the hashing secret (read, write, read back) and the slot table; the
    # others only read the secret and the "rl/ready" marker.
    assert [w.calls["proxy_get_shared_data"] for w in workers] == [KEY_COUNT + 1, 2, 2]
    results = [send(workers[i % 3]) for i in range(20)]
    assert admitted(results) == 7
    assert metrics.get(f"{PREFIX}.per-client.allowed") == 7


def test_cas_mismatch_is_retried_and_never_over_admits(wasm):
    shared, metrics, clock = SharedData(), Metrics(), Clock()
    a, b = (make_host(wasm, config(policy(burst=3)), shared_data=shared, metrics=metrics, clock=clock)
            for _ in range(2))
    interleaved = []

    def other_worker(key: bytes) -> None:
        if key.startswith(b"rl/") and len(interleaved) < 2:
            interleaved.append(send(b))  # B reads and writes the same set between A's get and set

    reads_before = a.calls["proxy_get_shared_data"]
    shared.after_get = other_worker
    first = send(a)
    shared.after_get = None
    assert first.local_response is None and admitted(interleaved) == 2
    assert shared.cas_mismatches == 2
    assert a.calls["proxy_get_shared_data"] - reads_before == 3  # A re-read after each mismatch
    assert first.response_header("ratelimit") == '"per-client";r=0;t=3'  # saw B's spending
    assert admitted([send(a), send(b)]) == 0


def test_endless_contention_fails_closed(wasm):
    shared = SharedData()
    host = make_host(wasm, config(policy(burst=100)), shared_data=shared)

    def bump(key: bytes) -> None:  # another worker rewrites the set after every read
        value, _ = shared.entries[key]
        shared.set(key, value, 0)

    shared.after_get = bump
    result = send(host)
    shared.after_get = None
    assert result.local_response is not None and result.local_response.status == 429
    assert host.metric(f"{PREFIX}.cas_exhausted") == 1
    assert send(host).local_response is None


def test_memory_is_bounded_whatever_the_number_of_clients(wasm):
    shared = SharedData()
    host = make_host(wasm, config(policy(rate=0.001, burst=10), hops=0), shared_data=shared)
    assert len(shared.entries) == KEY_COUNT
    start = time.monotonic()
    clients = 100_000
    for i in range(clients):
        host.http_request({}, route="r1", peer=f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}:1000",
                          response_headers=None)
    elapsed = time.monotonic() - start
    assert len(shared.entries) == KEY_COUNT <= SLOT_COUNT
    assert all(len(v) == 64 for k, (v, _) in shared.entries.items() if k not in (b"rl/ready", b"rl/secret"))
    assert host.metric(f"{PREFIX}.per-client.allowed") == clients  # every new client starts full
    # More live buckets than slots: the closest-to-full ones were taken over, and counted.
    assert host.metric(f"{PREFIX}.slot_evictions") >= clients - SLOT_COUNT
    print(f"100k clients in {elapsed:.1f}s")
