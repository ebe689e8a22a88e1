"""Where policy revisions live. Chosen by URL: `sqlite:///path` (embedded default)."""

from controlplane.store.base import Conflict, Revision, Store, StoreUnavailable
from controlplane.store.open import open_store

__all__ = ["Conflict", "Revision", "Store", "StoreUnavailable", "open_store"]
