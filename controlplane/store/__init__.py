"""Where policy revisions live. Chosen by URL: `sqlite:///path` (embedded, one replica) or
`redis://host:port/db` (shared by several replicas)."""

from controlplane.store.base import AuditEntry, Conflict, Revision, Store, StoreUnavailable, TokenExists, TokenRecord
from controlplane.store.open import open_store, redacted

__all__ = ["AuditEntry", "Conflict", "Revision", "Store", "StoreUnavailable", "TokenExists", "TokenRecord",
           "open_store", "redacted"]
