"""The console's summaries without a browser: bounded at fleet scale."""

from __future__ import annotations

import json


async def test_the_proxy_summary_is_a_page_and_counts_at_1000_proxies() -> None:
    """1,000 connected proxies (the fleet in process): one poll answers a page of rows and the counts."""
    from aiohttp.test_utils import make_mocked_request

    from controlplane.policy import Policy
    from controlplane.store.base import Revision
    from controlplane.ui.views import ConsoleViews
    from controlplane.xds import ProxyRegistry
    from controlplane.xds.status import ProxyStatus

    fleet = ProxyRegistry()
    for i in range(1000):
        fleet.connect(ProxyStatus(node_id=f"edge-{i:04d}", cluster="edge", group="g", stream_id=i))

    class OneRevision:
        async def current(self) -> Revision:
            return Revision(number=7, policy=Policy(), created_at=0.0, actor="t", message="m")

    views = ConsoleViews(OneRevision(), fleet)  # type: ignore[arg-type]
    views._edges = lambda: []  # type: ignore[method-assign]  # no admin interfaces to read here
    response = await views.overview(make_mocked_request("GET", "/ui/api/overview?page=3&size=50"))
    body = json.loads(response.body)
    assert body["proxies"]["total"] == 1000 and body["proxies"]["behind"] == 1000
    assert body["proxies"]["pages"] == 20 and len(body["proxies"]["items"]) == 50
    assert body["proxies"]["items"][0]["node_id"] == "edge-0150"
