"""Translation runs in a worker thread: while a large policy is being translated, the event loop
keeps serving every xDS stream (before, one revision of a 10,000-route policy held every stream,
ACKs included, for as long as it took to translate it for every group)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from publishing import Revisions, publishing
from test_bounded_state import BOUND_S, _policy, eventually
from xds_client import AdsClient

from controlplane.cache import SnapshotCache
from controlplane.controller.publisher import Publisher
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


async def test_a_write_after_a_quiet_spell_goes_out_at_once_and_the_burst_behind_it_waits() -> None:
    """An isolated change pays no debounce; the writes that follow it within `quiet_s` are held
    until writes pause (here far longer than the test waits, so holding shows)."""
    store = Revisions()
    publisher = Publisher(store, SnapshotCache(), translate, quiet_s=4 * BOUND_S, max_delay_s=8 * BOUND_S)  # type: ignore[arg-type]
    running = asyncio.create_task(publisher.run())
    try:
        store.queue.put_nowait(Revision(1, _policy(), 0.0, "test", ""))
        await eventually(lambda: publisher.revision is not None, "revision 1 published without a debounce")
        store.queue.put_nowait(Revision(2, _policy(), 0.0, "test", ""))
        await asyncio.sleep(1.0)
        assert publisher.revision is not None and publisher.revision.number == 1, "a write within the burst was not debounced"
    finally:
        running.cancel()
