"""The consistency check before any push, and the publisher refusing a snapshot that fails it."""

from __future__ import annotations

import asyncio
import logging

import pytest
from policies import demo_policy
from publishing import Revisions

from controlplane import resources as types
from controlplane.cache import SnapshotCache
from controlplane.cache.consistency import problems
from controlplane.controller.publisher import Publisher
from controlplane.policy import Policy, parse_document, with_document
from controlplane.store import Revision
from controlplane.translate import ProxyGroup, Resources, translate

GROUP = ProxyGroup("edge", "127.0.0.1", 10000)


def policy(w1: int = 100, w2: int = 0) -> Policy:
    out = Policy()
    for raw in demo_policy(8001, 8002, w1, w2):
        out = with_document(out, parse_document(raw))
    return out


def test_translated_policy_is_consistent() -> None:
    assert problems(translate(policy(), GROUP)) == []


def test_each_kind_of_dangling_reference_is_named() -> None:
    resources = translate(policy(), GROUP)
    del resources[types.CLUSTER]["classifier-v2"]
    assert problems(resources) == ["edge routes to cluster 'classifier-v2', which does not exist"]
    resources = translate(policy(), GROUP)
    del resources[types.ENDPOINT]["classifier-v1"]
    assert problems(resources) == ["EDS cluster 'classifier-v1' has no ClusterLoadAssignment"]
    resources = translate(policy(), GROUP)
    del resources[types.ROUTE]["edge"]
    assert problems(resources) == ["listener edge-http uses route configuration 'edge', which does not exist"]


async def test_inconsistent_snapshot_is_not_published(caplog: pytest.LogCaptureFixture) -> None:
    def broken_at_revision_2(p: Policy, group: ProxyGroup) -> Resources:
        resources = translate(p, group)
        if p == policy(0, 100):  # a translator bug: the cluster the new split needs goes missing
            del resources[types.CLUSTER]["classifier-v2"]
        return resources

    store = Revisions()
    cache = SnapshotCache()
    published: list[int] = []
    publisher = Publisher(store, cache, broken_at_revision_2, quiet_s=0, max_delay_s=0,  # type: ignore[arg-type]
                          on_publish=lambda r: published.append(r.number))
    publisher.join(GROUP)
    running = asyncio.create_task(publisher.run())
    try:
        async with asyncio.timeout(5):
            store.queue.put_nowait(Revision(1, policy(), 0.0, "test", ""))
            while published != [1]:
                await asyncio.sleep(0.01)
            store.queue.put_nowait(Revision(2, policy(0, 100), 0.0, "test", ""))
            while not (errors := [r for r in caplog.records if r.levelno == logging.ERROR]):
                await asyncio.sleep(0.01)
        (record,) = errors
        assert "REVISION 2 NOT PUBLISHED" in record.getMessage()
        assert "cluster 'classifier-v2', which does not exist" in record.getMessage()
        snapshot = cache.get(GROUP.key)
        assert snapshot is not None and snapshot.revision == 1  # the previous snapshot keeps serving
        assert published == [1]  # and the published revision says so
    finally:
        running.cancel()
