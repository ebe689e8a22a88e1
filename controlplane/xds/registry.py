"""Which proxies are connected (to this replica, or, as a view, to any), and who to tell when
that changes: the quota balancer, the proxy directory, the console."""

from __future__ import annotations

from collections.abc import Callable

from controlplane.xds.status import ProxyStatus


class ProxyRegistry:
    def __init__(self) -> None:
        self._proxies: dict[int, ProxyStatus] = {}  # by stream id: a node reconnecting has two for a while
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every connect and disconnect."""
        self._listeners.append(listener)

    def connect(self, proxy: ProxyStatus) -> None:
        self._proxies[proxy.stream_id] = proxy
        self._changed()

    def disconnect(self, proxy: ProxyStatus) -> None:
        if self._proxies.pop(proxy.stream_id, None) is not None:
            self._changed()

    def proxies(self) -> list[ProxyStatus]:
        return sorted(self._proxies.values(), key=lambda p: (p.cluster, p.node_id, p.stream_id))

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()
