"""How a global rate and burst are split between proxies. Pure arithmetic."""

from __future__ import annotations


def split(demand: dict[str, float], floor: float = 0.1) -> dict[str, float]:
    """Each proxy's fraction of a global limit: proportional to its demand (requests/s), with
    `floor`/n kept by every proxy so an idle one can still admit its first requests and then
    earn a larger share. The fractions add up to 1."""
    assert 0 <= floor <= 1
    n = len(demand)
    total = sum(max(d, 0.0) for d in demand.values())
    return {node: floor / n + (1 - floor) * (max(d, 0.0) / total if total > 0 else 1 / n)
            for node, d in sorted(demand.items())}


def moved(old: dict[str, float], new: dict[str, float], tolerance: float = 0.05) -> bool:
    """Whether new fractions differ enough from the old ones to be worth a push."""
    if old.keys() != new.keys():
        return True
    return any(abs(new[n] - old[n]) > tolerance * old[n] for n in new)
