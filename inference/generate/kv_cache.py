"""The KV cache: fixed-size blocks under a memory budget, shared by prefix.

A sequence's keys and values live in a list of blocks of `block_size` tokens. A full block of
prompt tokens is registered under a hash of its tokens and of every token before it, so a later
prompt that starts the same way reuses the block instead of recomputing it. Blocks nobody uses
keep their content and stay findable until they are needed for something else (LRU), as in
vLLM's automatic prefix caching.
"""

from __future__ import annotations

from collections import OrderedDict, deque

import numpy as np

BlockHash = int


def prefix_hashes(tokens: list[int], block_size: int) -> list[BlockHash]:
    """One hash per full block: each covers the block's tokens and all the blocks before it."""
    hashes: list[BlockHash] = []
    parent = 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash((parent, tuple(tokens[start : start + block_size])))
        hashes.append(parent)
    return hashes


class BlockPool:
    """Blocks of [layers, kv_heads, block_size, head_dim] keys and values in two host arrays."""

    def __init__(self, num_blocks: int, block_size: int, layers: int, kv_heads: int, head_dim: int) -> None:
        assert num_blocks > 0 and block_size > 0
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (num_blocks, layers, kv_heads, block_size, head_dim)
        self.keys = np.zeros(shape, dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.float32)
        self._refs = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        # Unreferenced blocks that still hold a cached prefix, least recently used first.
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._by_hash: dict[BlockHash, int] = {}
        self._hash_of: list[BlockHash | None] = [None] * num_blocks

    @staticmethod
    def bytes_per_block(block_size: int, layers: int, kv_heads: int, head_dim: int) -> int:
        return 2 * block_size * layers * kv_heads * head_dim * 4

    @property
    def available(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def in_use(self) -> int:
        return self.num_blocks - self.available

    def usage(self) -> float:
        """Fraction of blocks held by sequences (cached but unused blocks count as free)."""
        return self.in_use / self.num_blocks

    def allocate(self, count: int) -> list[int] | None:
        """`count` fresh blocks, or None (and nothing taken) when too few are available."""
        if count > self.available:
            return None
        blocks: list[int] = []
        for _ in range(count):
            if self._free:
                block = self._free.popleft()
            else:
                block, _ = self._evictable.popitem(last=False)
                stale = self._hash_of[block]
                assert stale is not None and self._by_hash.get(stale) == block
                del self._by_hash[stale]
                self._hash_of[block] = None
            assert self._refs[block] == 0
            self._refs[block] = 1
            blocks.append(block)
        return blocks

    def match(self, hashes: list[BlockHash]) -> list[int]:
        """The cached blocks for the longest run of `hashes` from the start, now referenced."""
        found: list[int] = []
        for h in hashes:
            block = self._by_hash.get(h)
            if block is None:
                break
            found.append(block)
        for block in found:
            if self._refs[block] == 0:
                del self._evictable[block]
            self._refs[block] += 1
        return found

    def register(self, block: int, block_hash: BlockHash) -> None:
        """Make a full, written block findable by its prefix hash (first writer wins)."""
        assert self._refs[block] > 0
        if block_hash not in self._by_hash and self._hash_of[block] is None:
            self._by_hash[block_hash] = block
            self._hash_of[block] = block_hash

    def release(self, blocks: list[int]) -> None:
        # Last block first: a sequence's tail is the least likely to be shared, so it is evicted first.
        for block in reversed(blocks):
            assert self._refs[block] > 0, f"block {block} released twice"
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if self._hash_of[block] is None:
                    self._free.append(block)
                else:
                    self._evictable[block] = None

    def write(self, blocks: list[int], start: int, keys: np.ndarray, values: np.ndarray) -> None:
        """Store keys/values [layers, kv_heads, n, head_dim] for token positions start..start+n."""
        n = keys.shape[2]
        bs = self.block_size
        pos = start
        while pos < start + n:
            block, offset = blocks[pos // bs], pos % bs
            take = min(bs - offset, start + n - pos)
            src = slice(pos - start, pos - start + take)
            self.keys[block, :, :, offset : offset + take] = keys[:, :, src]
            self.values[block, :, :, offset : offset + take] = values[:, :, src]
            pos += take

    def read(self, blocks: list[int], length: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values [layers, kv_heads, length, head_dim] of a sequence's first `length` tokens."""
        used = -(-length // self.block_size)
        keys = self.keys[blocks[:used]]  # [used, layers, kvh, bs, hd]
        values = self.values[blocks[:used]]
        layers, kvh, hd = keys.shape[1], keys.shape[2], keys.shape[4]
        keys = keys.transpose(1, 2, 0, 3, 4).reshape(layers, kvh, used * self.block_size, hd)[:, :, :length]
        values = values.transpose(1, 2, 0, 3, 4).reshape(layers, kvh, used * self.block_size, hd)[:, :, :length]
        return keys, values
