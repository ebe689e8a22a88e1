"""Several control-plane replicas on one Redis: leases for work that must run once, and the
state the quota balancer shares. With SQLite there is one replica and every lease is its own."""

from controlplane.replica.coordination import QUOTA_LEASE, Coordination
from controlplane.replica.lease import Lease, RedisLease, SoleLease, run_while_held

__all__ = ["QUOTA_LEASE", "Coordination", "Lease", "RedisLease", "SoleLease", "run_while_held"]
