"""Paged KV block manager (torch-free): block tables, ref counts, free list and a hash-chained prefix cache.

A sequence's KV lives in fixed-size blocks listed in its block table. A block that is full of *computed*
tokens gets a hash chained from its parent block's hash and its own token ids, so later sequences with the
same prefix reuse it by reference count. Blocks whose count drops to zero keep their contents in an LRU pool
and are evicted (oldest first) only when a fresh block is needed.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence

ROOT_HASH = 0x5EED  # parent hash of a sequence's first block


class NoFreeBlocksError(RuntimeError):
    """Raised when a caller allocates without checking capacity first (a scheduler bug, not user input)."""


class BlockManager:
    """Owns the KV blocks: who holds which block, which blocks are free, which are cached for reuse."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"num_blocks and block_size must be positive, got {num_blocks} and {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self._block_key: list[tuple[int, tuple[int, ...]] | None] = [None] * num_blocks  # (parent hash, tokens)
        self._block_hash: list[int | None] = [None] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))  # ref 0, nothing cached
        self._cached_free: OrderedDict[int, None] = OrderedDict()  # ref 0, cached contents; oldest first
        self._hash_to_block: dict[int, int] = {}
        self.block_tables: dict[int, list[int]] = {}
        self._seq_hashes: dict[int, list[int]] = {}  # chain hashes of each sequence's committed full blocks
        self.prefix_queries = 0  # full blocks looked up at admission
        self.prefix_hits = 0  # of those, found in the cache

    # ---- capacity -------------------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks available for new data (clean free list plus evictable cached blocks)."""
        return len(self._free) + len(self._cached_free)

    @property
    def num_used_blocks(self) -> int:
        """Blocks referenced by at least one sequence."""
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        """Blocks whose contents are registered in the prefix cache (in use or in the LRU pool)."""
        return len(self._hash_to_block)

    @property
    def prefix_hit_rate(self) -> float:
        """Share of looked-up full prompt blocks that were served from the cache."""
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    def blocks_needed(self, num_tokens: int) -> int:
        """Number of blocks that hold num_tokens tokens."""
        return -(-num_tokens // self.block_size)

    # ---- prefix cache ---------------------------------------------------------------------------------------
    @staticmethod
    def chain_hash(parent: int, tokens: tuple[int, ...]) -> int:
        """Hash of a full block given its parent's hash and its token ids."""
        return hash((parent, tokens))

    def match_prefix(self, token_ids: Sequence[int], max_tokens: int) -> list[int]:
        """Cached blocks holding the longest prefix of token_ids, limited to max_tokens tokens; no side effects."""
        if not self.enable_prefix_caching:
            return []
        bs = self.block_size
        parent = ROOT_HASH
        hits: list[int] = []
        for i in range(max(0, max_tokens) // bs):
            tokens = tuple(token_ids[i * bs:(i + 1) * bs])
            h = self.chain_hash(parent, tokens)
            block = self._hash_to_block.get(h)
            if block is None or self._block_key[block] != (parent, tokens):  # miss, or a hash collision
                break
            hits.append(block)
            parent = h
        return hits

    def record_lookup(self, num_full_blocks: int, num_hits: int) -> None:
        """Count an admission's prefix lookup (called once per admitted sequence, not per retry)."""
        if self.enable_prefix_caching:
            self.prefix_queries += num_full_blocks
            self.prefix_hits += num_hits

    # ---- allocation -----------------------------------------------------------------------------------------
    def can_allocate(self, seq_id: int, num_tokens: int, prefix_blocks: Sequence[int] = ()) -> bool:
        """Whether the sequence's table can grow to hold num_tokens tokens (after attaching prefix_blocks)."""
        table = self.block_tables.get(seq_id)
        have = len(table) if table else 0
        fresh = self.blocks_needed(num_tokens) - have - len(prefix_blocks)
        if fresh <= 0:
            return True
        pooled = sum(1 for b in prefix_blocks if self.ref_counts[b] == 0)  # attaching them removes them from pool
        return fresh <= self.num_free_blocks - pooled

    def allocate(self, seq_id: int, num_tokens: int, prefix_blocks: Sequence[int] = ()) -> bool:
        """Grow the sequence's table to hold num_tokens tokens; False (and no change) if blocks are short.

        prefix_blocks (from match_prefix) are attached first and only to a sequence that has no blocks yet.
        """
        if not self.can_allocate(seq_id, num_tokens, prefix_blocks):
            return False
        table = self.block_tables.setdefault(seq_id, [])
        hashes = self._seq_hashes.setdefault(seq_id, [])
        if prefix_blocks:
            if table:
                raise ValueError(f"prefix blocks can only be attached to a sequence without blocks (seq {seq_id})")
            for b in prefix_blocks:
                if self.ref_counts[b] == 0:
                    self._cached_free.pop(b)
                self.ref_counts[b] += 1
                table.append(b)
                hashes.append(self._block_hash[b])  # type: ignore[arg-type]
        for _ in range(self.blocks_needed(num_tokens) - len(table)):
            table.append(self._take_fresh_block())
        return True

    def _take_fresh_block(self) -> int:
        if self._free:
            block = self._free.popleft()
        elif self._cached_free:
            block, _ = self._cached_free.popitem(last=False)  # evict the least recently freed cached block
            h = self._block_hash[block]
            if h is not None and self._hash_to_block.get(h) == block:
                del self._hash_to_block[h]
            self._block_hash[block] = None
            self._block_key[block] = None
        else:
            raise NoFreeBlocksError("no free KV block; call can_allocate() before allocate()")
        self.ref_counts[block] = 1
        return block

    def commit(self, seq_id: int, token_ids: Sequence[int], num_computed_tokens: int) -> list[int]:
        """Register every block full of computed tokens in the prefix cache; returns the newly registered blocks.

        Callers pass only tokens that are final (prompt, sampled or accepted tokens, never unverified drafts).
        The scheduler commits at scheduling time so a request admitted later in the same step can already share
        the blocks: the model writes every new token's K/V before any attention reads in each layer.
        """
        new: list[int] = []
        if not self.enable_prefix_caching:
            return new
        table = self.block_tables.get(seq_id)
        if table is None:
            return new
        hashes = self._seq_hashes[seq_id]
        bs = self.block_size
        n_full = min(num_computed_tokens // bs, len(table))
        parent = hashes[-1] if hashes else ROOT_HASH
        for i in range(len(hashes), n_full):
            tokens = tuple(token_ids[i * bs:(i + 1) * bs])
            h = self.chain_hash(parent, tokens)
            hashes.append(h)
            block = table[i]
            if h not in self._hash_to_block and self._block_hash[block] is None:
                self._hash_to_block[h] = block
                self._block_hash[block] = h
                self._block_key[block] = (parent, tokens)
                new.append(block)
            parent = h
        return new

    def uncache(self, blocks: Sequence[int]) -> None:
        """Drop the cache registration of blocks whose contents turned out not to be computed (a failed step)."""
        for block in blocks:
            h = self._block_hash[block]
            if h is not None and self._hash_to_block.get(h) == block:
                del self._hash_to_block[h]
            self._block_hash[block] = None
            self._block_key[block] = None
            if block in self._cached_free:
                del self._cached_free[block]
                self._free.append(block)

    def free(self, seq_id: int) -> None:
        """Release the sequence's blocks; cached ones go to the LRU pool (tail blocks evicted first)."""
        table = self.block_tables.pop(seq_id, None)
        self._seq_hashes.pop(seq_id, None)
        if not table:
            return
        for block in reversed(table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                if self._block_hash[block] is not None:
                    self._cached_free[block] = None
                else:
                    self._free.append(block)

    def reset_prefix_cache(self) -> None:
        """Forget every cached block that no sequence holds (e.g. after weights change)."""
        for block in list(self._cached_free):
            h = self._block_hash[block]
            if h is not None:
                self._hash_to_block.pop(h, None)
            self._block_hash[block] = None
            self._block_key[block] = None
            self._free.append(block)
        self._cached_free.clear()
