"""Two edge Envoys share one global limit: together they admit about the global rate."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from harness import ROOT, Backend, ControlPlane, Envoy, http
from policies import demo_policy

WASM = ROOT / "build/filters/bin/ratelimit.wasm"
RATE, BURST, SECONDS = 10.0, 10, 6.0


def drive(envoy: Envoy, per_second: float, until: float, codes: Counter[int], lock: threading.Lock) -> None:
    interval = 1 / per_second
    next_at = time.monotonic()
    while next_at < until:
        time.sleep(max(0.0, next_at - time.monotonic()))
        status = http("GET", f"{envoy.url}/v2/models/classifier", timeout=2)[0]
        with lock:
            codes[status] += 1
        next_at += interval


def test_two_envoys_admit_about_the_global_rate(tmp_path: Path, start_envoy: Callable[..., Envoy],
                                                backends: dict[int, Backend]) -> None:
    assert WASM.exists(), f"{WASM} is missing: run `make filters`"
    cp = ControlPlane.start(tmp_path, env={"SLUICE_QUOTA_INTERVAL_S": "0.5"})
    try:
        shared = {"kind": "RateLimit", "name": "shared", "spec": {
            "service": "classifier", "rate": RATE, "burst": BURST, "key": [], "scope": "global"}}
        status, body = cp.apply(*demo_policy(backends[1].port, backends[2].port), shared)
        assert status == 200, body
        a = start_envoy(cp, node_id="edge-a")
        b = start_envoy(cp, node_id="edge-b")
        for envoy in (a, b):
            cp.wait_converged(envoy.node_id)
        # Uneven traffic: a gets three quarters of it. Both together offer 5x the global rate.
        codes = {"a": Counter[int](), "b": Counter[int]()}
        lock = threading.Lock()
        until = time.monotonic() + SECONDS
        threads = [threading.Thread(target=drive, args=(a, 37.5, until, codes["a"], lock)),
                   threading.Thread(target=drive, args=(b, 12.5, until, codes["b"], lock))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        admitted = codes["a"][200] + codes["b"][200]
        expected = BURST + RATE * SECONDS
        print(f"global limit: admitted {admitted} of {sum(codes['a'].values()) + sum(codes['b'].values())} "
              f"(a {codes['a'][200]}, b {codes['b'][200]}); ideal {expected:.0f}; ratio {admitted / expected:.2f}")
        assert set(codes["a"]) | set(codes["b"]) <= {200, 429}
        # Two independent limits would admit up to 2x; the shared one stays near 1x.
        assert 0.75 * expected <= admitted <= 1.25 * expected
        assert codes["b"][200] >= 5  # the quieter Envoy is not starved
    finally:
        cp.proc.stop()
