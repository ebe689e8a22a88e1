"""Global rate limits without a per-request hop: each edge Envoy enforces a share of the
global rate, and the shares follow each Envoy's measured demand."""

from controlplane.quota.shares import moved, split

__all__ = ["moved", "split"]
