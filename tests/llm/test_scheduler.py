"""Scheduler unit tests (pure): continuous batching, token budget, chunked prefill, priorities, preemption."""

from __future__ import annotations

import itertools

import pytest

from loopstack.llm.engine.block_manager import BlockManager
from loopstack.llm.engine.params import QueueFullError, SamplingParams
from loopstack.llm.engine.scheduler import ScheduledBatch, Scheduler
from loopstack.llm.engine.sequence import Sequence, SequenceStatus

_ids = itertools.count()


def make_seq(prompt_len: int, max_tokens: int = 4, priority: int = 0, start: int | None = None) -> Sequence:
    sid = next(_ids)
    start = sid * 1000 if start is None else start  # distinct prompts unless a test wants shared prefixes
    return Sequence(sid, f"r{sid}", list(range(start, start + prompt_len)), SamplingParams(max_tokens=max_tokens),
                    priority=priority, arrival=sid)


def fake_step(sched: Scheduler, batch: ScheduledBatch) -> list[Sequence]:
    """Pretend the model ran: advance computed tokens, sample token 7 when caught up, finish at max_tokens."""
    done = []
    for seq, n, la in zip(batch.seqs, batch.num_new_tokens, batch.num_lookahead):
        seq.num_computed_tokens += n - la
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(7)
            sched.bm.commit(seq.seq_id, seq.token_ids, seq.num_computed_tokens)
            if seq.num_output_tokens >= seq.params.max_tokens:
                sched.finish(seq, SequenceStatus.FINISHED_LENGTH)
                done.append(seq)
    return done


def run_all(sched: Scheduler, limit: int = 1000) -> list[ScheduledBatch]:
    batches = []
    for _ in range(limit):
        if not sched.has_unfinished():
            return batches
        batch = sched.schedule()
        assert batch.num_tokens <= sched.max_num_batched_tokens
        batches.append(batch)
        fake_step(sched, batch)
    raise AssertionError("scheduler did not drain")


def test_sequences_join_and_leave_every_step():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=64)
    a, b, c = make_seq(5, max_tokens=1), make_seq(5, max_tokens=3), make_seq(5, max_tokens=2)
    for s in (a, b, c):
        sched.add(s)
    first = sched.schedule()
    assert first.seqs == [a, b]  # max_num_seqs caps the batch; c waits
    fake_step(sched, first)
    assert a.is_finished
    second = sched.schedule()
    assert second.seqs == [b, c]  # c joins the moment a leaves, while b keeps decoding
    assert second.num_new_tokens == [1, 5]
    run_all(sched)
    assert all(s.num_output_tokens == s.params.max_tokens for s in (a, b, c))
    assert sched.bm.num_free_blocks == 64


def test_long_prompt_is_chunked_and_decodes_go_first():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=8)
    short = make_seq(3, max_tokens=10)
    sched.add(short)
    fake_step(sched, sched.schedule())  # short prefilled, now decoding
    long = make_seq(30, max_tokens=2)
    sched.add(long)
    chunks = []
    while long.num_output_tokens == 0:
        batch = sched.schedule()
        assert batch.seqs[0] is short and batch.num_new_tokens[0] == 1  # the decode is never stalled
        chunks.append(batch.num_new_tokens[1])
        fake_step(sched, batch)
    assert chunks == [7, 7, 7, 7, 2]
    assert short.num_output_tokens == 1 + len(chunks)


def test_without_chunked_prefill_prompt_waits_for_whole_budget():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=8, enable_chunked_prefill=False)
    a, b = make_seq(6), make_seq(6)
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    assert batch.seqs == [a] and batch.num_new_tokens == [6]
    fake_step(sched, batch)
    batch = sched.schedule()  # a decodes (1) and b's 6 tokens fit now
    assert batch.seqs == [a, b] and batch.num_new_tokens == [1, 6]


def test_priority_then_fcfs_admission():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=1, max_num_batched_tokens=64)
    low1, high, low2, high2 = make_seq(3, 1, priority=5), make_seq(3, 1, priority=0), make_seq(3, 1, 5), \
        make_seq(3, 1, 0)
    for s in (low1, high, low2, high2):
        sched.add(s)
    order = [b.seqs[0] for b in run_all(sched)]
    assert order == [high, high2, low1, low2]


def test_preemption_victim_is_lowest_priority_then_newest_and_it_recomputes():
    bm = BlockManager(num_blocks=6, block_size=2)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    old = make_seq(4, max_tokens=6, priority=1)
    new = make_seq(4, max_tokens=6, priority=1)
    vip = make_seq(4, max_tokens=6, priority=0)
    for s in (old, new, vip):
        sched.add(s)
    fake_step(sched, sched.schedule())  # each holds 2 blocks: the cache is full
    assert bm.num_free_blocks == 0
    batch = sched.schedule()  # all three need a 3rd block: someone must go
    assert batch.preempted == [new]
    assert new.status is SequenceStatus.WAITING and new.num_computed_tokens == 0
    assert new not in batch.seqs and sched.num_preemptions == 1
    fake_step(sched, batch)
    batches = run_all(sched)
    assert all(s.num_output_tokens == 6 for s in (old, new, vip))
    assert vip.num_preemptions == 0
    assert bm.num_free_blocks == 6
    # the preempted sequence was resumed with its generated tokens as part of the recomputed prefix
    resumed = next(b for b in batches if new in b.seqs and b.num_new_tokens[b.seqs.index(new)] > 1)
    assert resumed.num_new_tokens[resumed.seqs.index(new)] >= 4


def test_preemption_of_an_already_scheduled_lower_priority_decode_returns_its_budget():
    bm = BlockManager(num_blocks=4, block_size=2)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    low = make_seq(1, max_tokens=8, priority=9)
    sched.add(low)
    fake_step(sched, sched.schedule())  # low decoding, 1 block
    high = make_seq(5, max_tokens=8, priority=0)
    sched.add(high)
    batch = sched.schedule()  # low decodes (needs 1 block), high admits with 3 blocks
    fake_step(sched, batch)
    assert high.num_output_tokens == 1 and bm.num_free_blocks == 0
    batch = sched.schedule()  # high (prefilled: decode) needs a 4th block: low is the victim, scheduled or not
    assert low in batch.preempted and batch.seqs == [high]
    assert batch.num_tokens == 1


def test_queue_limit_raises_queue_full():
    sched = Scheduler(BlockManager(8, 4), max_waiting=2)
    sched.add(make_seq(2))
    sched.add(make_seq(2))
    with pytest.raises(QueueFullError, match="queue is full"):
        sched.add(make_seq(2))


def test_abort_waiting_and_running_frees_everything():
    bm = BlockManager(16, 4)
    sched = Scheduler(bm, max_num_seqs=1, max_num_batched_tokens=64)
    a, b = make_seq(6), make_seq(6)
    sched.add(a)
    sched.add(b)
    fake_step(sched, sched.schedule())
    sched.finish(b, SequenceStatus.FINISHED_ABORTED)  # waiting
    sched.finish(a, SequenceStatus.FINISHED_ABORTED)  # running
    assert not sched.has_unfinished() and sched.num_waiting == 0
    assert bm.num_free_blocks == 16
    assert sched.schedule().seqs == []


def test_lookahead_slots_reserved_for_decodes_and_capped_by_max_tokens():
    bm = BlockManager(64, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64, num_lookahead_tokens=3)
    s = make_seq(4, max_tokens=3)
    sched.add(s)
    batch = sched.schedule()
    assert batch.num_new_tokens == [4] and batch.num_lookahead == [0]  # prefill: no drafts
    fake_step(sched, batch)
    batch = sched.schedule()
    assert batch.num_lookahead == [1] and batch.num_new_tokens == [2]  # 2 tokens left: 1 sampled + 1 draft
    assert len(bm.block_tables[s.seq_id]) * 4 >= s.num_computed_tokens + 2


def test_prefix_hit_at_admission_skips_cached_tokens():
    bm = BlockManager(64, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    a = make_seq(10, max_tokens=1, start=100)
    sched.add(a)
    run_all(sched)
    b = make_seq(10, max_tokens=1, start=100)
    sched.add(b)
    batch = sched.schedule()
    assert batch.num_new_tokens == [2] and b.num_computed_tokens == 8
    assert bm.prefix_hits == 2 and bm.prefix_queries == 4


def test_more_sequences_than_cache_all_finish_under_pressure():
    bm = BlockManager(num_blocks=10, block_size=2)
    sched = Scheduler(bm, max_num_seqs=6, max_num_batched_tokens=7)
    seqs = [make_seq(3 + i % 4, max_tokens=5, priority=i % 2) for i in range(12)]
    for s in seqs:
        sched.add(s)
    run_all(sched, limit=2000)
    assert all(s.num_output_tokens == 5 for s in seqs)
    assert sched.num_preemptions > 0
    assert bm.num_free_blocks == 10


@pytest.mark.timeout(30)
def test_without_chunked_prefill_a_preempted_sequence_longer_than_the_budget_still_finishes():
    # prompts fit the budget (8) but prompt + outputs (16) do not: the second sequence is preempted with ~10
    # tokens and must be recomputed in chunks, or it waits forever
    bm = BlockManager(num_blocks=10, block_size=2, enable_prefix_caching=False)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=8, enable_chunked_prefill=False)
    seqs = [make_seq(6, max_tokens=10) for _ in range(2)]
    for s in seqs:
        sched.add(s)
    run_all(sched, limit=500)
    assert sched.num_preemptions > 0
    assert all(s.num_output_tokens == 10 for s in seqs)
