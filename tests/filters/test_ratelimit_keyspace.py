"""The limiter's key space cannot be attacked (the compiled ratelimit.wasm in the wasmtime host):
keys crafted to share a victim's slot set do not evict its bucket, because bucket hashes are
keyed with a secret of the Envoy; and one IPv6 /64 is one client."""

from __future__ import annotations

import json

from proxywasm_host import Clock, SharedData, make_host

FILTER = "ratelimit"  # the `wasm` fixture (conftest.py)
BURST = 3


def config(**policy: object) -> str:
    return json.dumps({"xff_trusted_hops": 0, "policies": [
        {"name": "p", "rate": 0.001, "burst": BURST, **policy}]})


PER_KEY = config(key=[{"type": "header", "name": "x-api-key"}])
PER_CLIENT = [{"type": "client_ip"}]


def crafted_keys(wasm, victim: str, wanted: int, tries: int = 100_000) -> list[str]:
    """What an attacker does offline with its own copy of the filter and configuration: cycle
    through keys until `wanted` of them land in the victim's slot set."""
    shared = SharedData()
    offline = make_host(wasm, PER_KEY, shared_data=shared)
    read: list[bytes] = []
    shared.after_get = read.append  # each request reads its key's set

    def set_of(key: str) -> bytes:
        read.clear()
        offline.http_request({"x-api-key": key}, route="r1", response_headers=None)
        return read[-1]

    target = set_of(victim)
    found = [k for k in (f"k{i}" for i in range(tries)) if set_of(k) == target][:wanted]
    assert len(found) == wanted, "4096 sets: about 24 of 100,000 keys share any one set"
    return found


def test_keys_crafted_offline_do_not_evict_a_steady_clients_bucket(wasm) -> None:
    crafted = crafted_keys(wasm, "victim", wanted=8)
    clock = Clock()
    envoy = make_host(wasm, PER_KEY, shared_data=SharedData(), clock=clock)

    def admitted(key: str, n: int) -> int:
        return sum(envoy.http_request({"x-api-key": key}, route="r1").local_response is None for _ in range(n))

    assert admitted("victim", BURST + 1) == BURST  # its bucket is empty for the next 50 minutes
    clock.advance(1.0)
    for key in crafted:  # each spends its whole burst: fuller-looking buckets than the victim's
        admitted(key, BURST)
    # Had the crafted keys shared the victim's set, its bucket (the closest to full of the set)
    # would have been evicted, and the victim would start again from a full one.
    assert admitted("victim", 1) == 0


def test_one_ipv6_64_is_one_client(wasm) -> None:
    envoy = make_host(wasm, config(key=PER_CLIENT), shared_data=SharedData())
    same_64 = [envoy.http_request({}, route="r1", peer=f"[2001:db8:1:2::{i:x}]:4000") for i in range(1, 1001)]
    assert sum(r.local_response is None for r in same_64) == BURST
    other_64 = envoy.http_request({}, route="r1", peer="[2001:db8:1:3::1]:4000")
    assert other_64.local_response is None
    ipv4 = [envoy.http_request({}, route="r1", peer=f"192.0.2.{i}:4000") for i in range(1, 11)]
    assert all(r.local_response is None for r in ipv4)  # IPv4 clients by address


def test_the_ipv6_prefix_is_configurable(wasm) -> None:
    envoy = make_host(wasm, config(key=PER_CLIENT, ipv6_prefix_len=128), shared_data=SharedData())
    hosts = [envoy.http_request({}, route="r1", peer=f"[2001:db8:1:2::{i:x}]:4000") for i in range(1, 11)]
    assert all(r.local_response is None for r in hosts)
    for bad in (0, 129):
        assert not envoy.configure(config(key=PER_CLIENT, ipv6_prefix_len=bad))
