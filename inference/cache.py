"""Response cache: an in-process LRU of model outputs keyed by the exact input tensors."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np


def cache_key(model: str, version: int, inputs: dict[str, np.ndarray]) -> bytes:
    """A digest of everything that determines a deterministic model's output."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{model}\0{version}\0".encode())
    for name in sorted(inputs):
        array = inputs[name]
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        if array.dtype == np.object_:
            for item in array.reshape(-1):
                digest.update(len(item).to_bytes(4, "little"))
                digest.update(item)
        else:
            digest.update(np.ascontiguousarray(array).data)
    return digest.digest()


class ResponseCache:
    """Bounded LRU with a time-to-live. Lives on the event loop thread: no locks."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, dict[str, np.ndarray]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> dict[str, np.ndarray] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, outputs = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return outputs

    def put(self, key: bytes, outputs: dict[str, np.ndarray]) -> None:
        for array in outputs.values():
            # Callers share the cached arrays: make any accidental write fail loudly.
            array.flags.writeable = False
        self._entries[key] = (self._clock() + self.ttl_s, outputs)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
