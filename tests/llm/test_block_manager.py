"""Block manager unit tests: allocation, ref counts, free list, prefix cache with chained hashes and LRU reuse."""

from __future__ import annotations

import pytest

from loopstack.llm.engine.block_manager import BlockManager


def test_allocate_grows_table_and_free_returns_blocks():
    bm = BlockManager(num_blocks=8, block_size=4)
    assert bm.allocate(1, 5)  # 5 tokens -> 2 blocks
    assert len(bm.block_tables[1]) == 2
    assert bm.num_free_blocks == 6 and bm.num_used_blocks == 2
    assert bm.allocate(1, 8)  # still 2 blocks
    assert len(bm.block_tables[1]) == 2
    assert bm.allocate(1, 9)
    assert len(bm.block_tables[1]) == 3
    assert len(set(bm.block_tables[1])) == 3
    bm.free(1)
    assert bm.num_free_blocks == 8 and 1 not in bm.block_tables


def test_allocate_refuses_without_change_when_short():
    bm = BlockManager(num_blocks=3, block_size=4)
    assert bm.allocate(1, 8)
    assert not bm.can_allocate(2, 9)
    assert not bm.allocate(2, 9)
    assert 2 not in bm.block_tables or bm.block_tables[2] == []
    assert bm.num_free_blocks == 1
    assert bm.allocate(2, 4)
    assert bm.num_free_blocks == 0


def test_blocks_of_two_sequences_never_overlap():
    bm = BlockManager(num_blocks=10, block_size=2)
    bm.allocate(1, 7)
    bm.allocate(2, 6)
    assert not set(bm.block_tables[1]) & set(bm.block_tables[2])


def test_prefix_hit_shares_blocks_by_refcount():
    bm = BlockManager(num_blocks=10, block_size=4)
    prompt = list(range(100, 110))  # 10 tokens: 2 full blocks + 2
    assert bm.match_prefix(prompt, len(prompt) - 1) == []
    bm.allocate(1, len(prompt))
    bm.commit(1, prompt, len(prompt))
    assert bm.num_cached_blocks == 2
    other = prompt[:8] + [7, 7, 7]
    hits = bm.match_prefix(other, len(other) - 1)
    assert hits == bm.block_tables[1][:2]
    assert bm.allocate(2, len(other), hits)
    assert bm.block_tables[2][:2] == hits
    assert bm.block_tables[2][2] not in bm.block_tables[1]
    assert [bm.ref_counts[b] for b in hits] == [2, 2]
    bm.free(1)
    assert [bm.ref_counts[b] for b in hits] == [1, 1]
    assert bm.num_used_blocks == 3


def test_prefix_match_is_chained_not_per_block():
    bm = BlockManager(num_blocks=10, block_size=2)
    a = [1, 2, 3, 4, 5]
    bm.allocate(1, len(a))
    bm.commit(1, a, 4)
    # same second block content but a different first block: the chain hash must not match it
    b = [9, 9, 3, 4, 5]
    assert bm.match_prefix(b, len(b) - 1) == []
    assert len(bm.match_prefix(a, len(a) - 1)) == 2


def test_prefix_match_leaves_at_least_one_token_to_compute():
    bm = BlockManager(num_blocks=10, block_size=4)
    p = list(range(8))
    bm.allocate(1, 8)
    bm.commit(1, p, 8)
    assert len(bm.match_prefix(p, len(p) - 1)) == 1  # the last block is recomputed so we get logits


def test_commit_only_hashes_computed_full_blocks():
    bm = BlockManager(num_blocks=10, block_size=4)
    toks = list(range(12))
    bm.allocate(1, 12)
    bm.commit(1, toks, 6)  # 1 full block computed
    assert bm.num_cached_blocks == 1
    bm.commit(1, toks, 12)
    assert bm.num_cached_blocks == 3


def test_freed_cached_blocks_stay_in_lru_pool_until_needed():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = [1, 2, 3, 4, 5]
    bm.allocate(1, 5)
    bm.commit(1, a, 5)
    bm.free(1)
    assert bm.num_free_blocks == 4 and bm.num_cached_blocks == 2
    assert len(bm.match_prefix(a, 4)) == 2  # still reusable after free
    bm.allocate(2, 4)  # the two clean free blocks are used first: cache survives
    assert bm.num_cached_blocks == 2
    bm.allocate(3, 2)  # now one cached block must be evicted: the tail block (freed first in reverse order)
    assert bm.num_cached_blocks == 1
    assert len(bm.match_prefix(a, 4)) == 1


def test_lru_evicts_least_recently_freed_first():
    bm = BlockManager(num_blocks=4, block_size=2)
    a, b = [1, 1, 9], [2, 2, 9]
    bm.allocate(1, 3)
    bm.commit(1, a, 2)
    bm.allocate(2, 3)
    bm.commit(2, b, 2)
    bm.free(1)  # a's block freed first -> oldest
    bm.free(2)
    bm.allocate(3, 2 * 3)  # needs 3 blocks: 2 clean, then evict one cached block
    assert bm.match_prefix(a, 2) == []
    assert len(bm.match_prefix(b, 2)) == 1


def test_hit_from_lru_pool_is_not_counted_free_twice():
    bm = BlockManager(num_blocks=3, block_size=2)
    a = [1, 2, 3, 4, 5]
    bm.allocate(1, 5)
    bm.commit(1, a, 4)
    bm.free(1)
    hits = bm.match_prefix(a, 4)
    assert len(hits) == 2
    # 3 blocks free in total, but attaching 2 pooled hits leaves 1: 7 tokens (4 blocks) cannot fit
    assert not bm.can_allocate(2, 7, hits)
    assert bm.allocate(2, 6, hits)
    assert bm.num_free_blocks == 0
    assert [bm.ref_counts[b] for b in bm.block_tables[2]] == [1, 1, 1]


def test_collision_check_compares_token_ids(monkeypatch):
    bm = BlockManager(num_blocks=6, block_size=2)
    monkeypatch.setattr(BlockManager, "chain_hash", staticmethod(lambda parent, tokens: 42))  # everything collides
    bm.allocate(1, 3)
    bm.commit(1, [1, 2, 3], 2)
    assert bm.match_prefix([5, 6, 7], 2) == []  # same hash, different tokens: a miss
    assert len(bm.match_prefix([1, 2, 7], 2)) == 1


def test_duplicate_content_is_cached_once_and_freed_cleanly():
    bm = BlockManager(num_blocks=6, block_size=2)
    toks = [1, 2, 3]
    bm.allocate(1, 3)
    bm.allocate(2, 3)
    bm.commit(1, toks, 2)
    bm.commit(2, toks, 2)
    assert bm.num_cached_blocks == 1
    bm.free(1)
    bm.free(2)
    assert bm.num_free_blocks == 6 and bm.num_cached_blocks == 1


def test_hit_counters():
    bm = BlockManager(num_blocks=10, block_size=2)
    bm.record_lookup(4, 3)
    bm.record_lookup(2, 0)
    assert bm.prefix_queries == 6 and bm.prefix_hits == 3
    assert bm.prefix_hit_rate == pytest.approx(0.5)


def test_prefix_caching_disabled_never_hits():
    bm = BlockManager(num_blocks=6, block_size=2, enable_prefix_caching=False)
    bm.allocate(1, 4)
    bm.commit(1, [1, 2, 3, 4], 4)
    assert bm.match_prefix([1, 2, 3, 4, 5], 4) == []
    assert bm.num_cached_blocks == 0


def test_reset_prefix_cache_keeps_blocks_in_use():
    bm = BlockManager(num_blocks=6, block_size=2)
    bm.allocate(1, 4)
    bm.commit(1, [1, 2, 3, 4], 4)
    bm.allocate(2, 2)
    bm.commit(2, [8, 8], 2)
    bm.free(2)
    bm.reset_prefix_cache()
    assert bm.num_cached_blocks == 2
    assert bm.match_prefix([8, 8, 1], 2) == []


def test_bad_sizes_rejected():
    with pytest.raises(ValueError, match="positive"):
        BlockManager(0, 16)


def test_uncache_forgets_registration_and_returns_pooled_blocks_to_the_free_list():
    bm = BlockManager(num_blocks=4, block_size=2)
    bm.allocate(1, 4)
    new = bm.commit(1, [1, 2, 3, 4], 4)
    assert new == bm.block_tables[1]
    assert bm.commit(1, [1, 2, 3, 4], 4) == []  # idempotent
    bm.free(1)
    bm.uncache(new)
    assert bm.num_cached_blocks == 0 and bm.num_free_blocks == 4
    assert bm.match_prefix([1, 2, 3, 4, 5], 4) == []
