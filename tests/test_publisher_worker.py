"""Translation runs in a worker thread: while a large policy is being translated, the event loop
keeps serving every xDS stream (before, one revision of a 10,000-route policy held every stream,
ACKs included, for as long as it took to translate it for every group)."""

from __future__ import annotations

import threading
from typing import Any

from publishing import publishing
from test_bounded_state import BOUND_S, _policy, eventually
from xds_client import AdsClient

from controlplane.policy import Policy
from controlplane.resources import CLUSTER, ENDPOINT, Resources
from controlplane.store import Revision
from controlplane.translate import translate


async def test_streams_are_served_while_a_revision_is_translated() -> None:
    limit = {"kind": "RateLimit", "name": "per-client", "spec": {"service": "classifier", "rate": 5, "burst": 5}}
    second = _policy(limit)
    gate, inside = threading.Event(), threading.Event()
    opened: list[bool] = []
    threads: list[threading.Thread] = []

    def slow(policy: Policy, group: Any) -> Resources:
        threads.append(threading.current_thread())
        if policy == second:  # a translation that takes as long as the test says
            inside.set()
            opened.append(gate.wait(BOUND_S))
        return translate(policy, group)

    async with publishing(slow) as serving:
        cache, store = serving.cache, serving.store
        client = AdsClient(f"127.0.0.1:{serving.port}", "edge-0")
        try:
            store.queue.put_nowait(Revision(1, _policy(), 0.0, "test", ""))
            await client.send(CLUSTER)
            clusters = await client.recv(timeout=BOUND_S)
            await client.ack(clusters)

            store.queue.put_nowait(Revision(2, second, 0.0, "test", ""))
            await eventually(inside.is_set, "revision 2 being translated")
            await client.send(ENDPOINT)  # served from revision 1's snapshot meanwhile
            assert (await client.recv(timeout=BOUND_S)).type_url == ENDPOINT
            gate.set()
            await eventually(lambda: cache.get("edge@127.0.0.1:10000") is not None
                             and cache.get("edge@127.0.0.1:10000").revision == 2, "revision 2 published")  # type: ignore[union-attr]
            assert opened == [True], "the stream was not served until the translation gave up waiting"
            assert threading.main_thread() not in threads
        finally:
            gate.set()
            await client.close()
