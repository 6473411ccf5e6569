"""Iteration-level scheduler (torch-free): continuous batching, chunked prefill, priorities, preemption.

Every step the scheduler builds a fresh batch under a token budget. Running decodes go first (one token each,
plus reserved draft slots when speculating), then running prompt chunks, then new sequences from the waiting
queue fill what is left, so a long prompt is prefilled in chunks and never stalls running decodes. When blocks
run out, the lowest-priority, newest running sequence is preempted: its blocks are freed and it goes back to
the waiting queue to be recomputed (cheaply, through the prefix cache) later.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

from loopstack.llm.engine.block_manager import BlockManager
from loopstack.llm.engine.params import QueueFullError
from loopstack.llm.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """One step's work: num_new_tokens[i] tokens of seqs[i] to compute; num_lookahead[i] are draft slots."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    num_lookahead: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    registered: list[int] = field(default_factory=list)  # blocks entered in the prefix cache while scheduling

    @property
    def num_tokens(self) -> int:
        """Tokens scheduled this step (including reserved draft slots)."""
        return sum(self.num_new_tokens)

    def __len__(self) -> int:
        return len(self.seqs)


class Scheduler:
    """Decides, every step, which sequences advance by how many tokens."""

    def __init__(self, block_manager: BlockManager, max_num_seqs: int = 64, max_num_batched_tokens: int = 2048,
                 enable_chunked_prefill: bool = True, max_waiting: int | None = None,
                 num_lookahead_tokens: int = 0, max_model_len: int | None = None) -> None:
        if max_num_seqs <= 0 or max_num_batched_tokens <= 0:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        if max_waiting is not None and max_waiting <= 0:
            raise ValueError(f"max_waiting must be positive or None, got {max_waiting}")
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.max_waiting = max_waiting
        self.num_lookahead_tokens = num_lookahead_tokens
        self.max_model_len = max_model_len
        self.running: list[Sequence] = []
        self._waiting: list[tuple[int, int, int, Sequence]] = []  # heap of (priority, arrival, seq_id, seq)
        self._num_waiting = 0
        self.num_preemptions = 0

    # ---- queue ----------------------------------------------------------------------------------------------
    @property
    def num_waiting(self) -> int:
        """Sequences queued (new or preempted)."""
        return self._num_waiting

    @property
    def num_running(self) -> int:
        """Sequences holding KV blocks."""
        return len(self.running)

    def has_unfinished(self) -> bool:
        """Anything waiting or running."""
        return bool(self._num_waiting or self.running)

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence; QueueFullError when max_waiting sequences are already queued."""
        if self.max_waiting is not None and self._num_waiting >= self.max_waiting:
            raise QueueFullError(
                f"the waiting queue is full ({self._num_waiting} requests); retry later or raise max_waiting"
            )
        self._push_waiting(seq)

    def _push_waiting(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        heapq.heappush(self._waiting, (seq.priority, seq.arrival, seq.seq_id, seq))
        self._num_waiting += 1

    def _peek_waiting(self) -> Sequence | None:
        while self._waiting and self._waiting[0][3].status is not SequenceStatus.WAITING:
            heapq.heappop(self._waiting)  # drop entries of sequences aborted while queued
        return self._waiting[0][3] if self._waiting else None

    def _pop_waiting(self) -> Sequence:
        seq = heapq.heappop(self._waiting)[3]
        self._num_waiting -= 1
        return seq

    def finish(self, seq: Sequence, status: SequenceStatus) -> None:
        """Mark a sequence finished (stopped, length or aborted) and free its blocks at once."""
        if seq.status is SequenceStatus.WAITING:
            self._num_waiting -= 1  # its heap entry is dropped lazily
        elif seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        seq.status = status
        self.bm.free(seq.seq_id)

    # ---- scheduling -----------------------------------------------------------------------------------------
    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.bm.free(seq.seq_id)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self._push_waiting(seq)

    def _lookahead(self, seq: Sequence) -> int:
        k = min(self.num_lookahead_tokens, seq.remaining_tokens - 1)
        if self.max_model_len is not None:
            k = min(k, self.max_model_len - seq.num_tokens)
        return max(k, 0)

    def schedule(self) -> ScheduledBatch:
        """Pick this step's batch: decodes, then running prompt chunks, then admissions, under the token budget."""
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        scheduled: dict[int, int] = {}  # seq_id -> index into batch lists
        order = sorted(self.running, key=Sequence.sort_key)
        candidates = [s for s in order if not s.is_prefilling] + [s for s in order if s.is_prefilling]
        for seq in candidates:
            if budget <= 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this step
            if seq.is_prefilling:
                lookahead, n = 0, min(seq.num_uncomputed_tokens, budget)
            else:
                lookahead = min(self._lookahead(seq), budget - 1)
                n = 1 + lookahead
            while not self.bm.allocate(seq.seq_id, seq.num_computed_tokens + n):
                if lookahead:  # drop the draft slots before preempting anyone
                    lookahead, n = 0, 1
                    continue
                victim = max(self.running, key=Sequence.sort_key)  # lowest priority, then newest
                if victim.seq_id in scheduled:
                    budget += self._unschedule(batch, scheduled, victim)
                self._preempt(victim)
                batch.preempted.append(victim)
                if victim is seq:
                    break
            else:
                scheduled[seq.seq_id] = len(batch.seqs)
                batch.seqs.append(seq)
                batch.num_new_tokens.append(n)
                batch.num_lookahead.append(lookahead)
                budget -= n
        for seq, n, lookahead in zip(batch.seqs, batch.num_new_tokens, batch.num_lookahead):
            # blocks that this step fills with final tokens (drafts excluded) become shareable right away
            batch.registered += self.bm.commit(seq.seq_id, seq.token_ids, seq.num_computed_tokens + n - lookahead)
        if not batch.preempted:
            budget = self._admit(batch, budget)
        for seq in batch.seqs:
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = time.perf_counter()
        return batch

    def _unschedule(self, batch: ScheduledBatch, scheduled: dict[int, int], seq: Sequence) -> int:
        i = scheduled.pop(seq.seq_id)
        n = batch.num_new_tokens[i]
        for lst in (batch.seqs, batch.num_new_tokens, batch.num_lookahead):
            del lst[i]
        for sid, j in scheduled.items():
            if j > i:
                scheduled[sid] = j - 1
        return n

    def _admit(self, batch: ScheduledBatch, budget: int) -> int:
        bs = self.bm.block_size
        while budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self._peek_waiting()
            if seq is None:
                break
            prefix = self.bm.match_prefix(seq.token_ids, seq.num_tokens - 1)
            cached = len(prefix) * bs
            n = seq.num_tokens - cached
            if n > budget:
                # without chunked prefill a prompt waits for a step with room for all of it; a preempted sequence
                # that grew past the whole budget could never fit, so it is recomputed in chunks instead
                if not self.enable_chunked_prefill and n <= self.max_num_batched_tokens:
                    break
                n = budget
            if not self.bm.allocate(seq.seq_id, cached + n, prefix):
                break
            self.bm.record_lookup((seq.num_tokens - 1) // bs, len(prefix))
            self._pop_waiting()
            seq.status = SequenceStatus.RUNNING
            seq.num_computed_tokens = cached
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            batch.num_lookahead.append(0)
            batch.registered += self.bm.commit(seq.seq_id, seq.token_ids, cached + n)
            budget -= n
        return budget

    def recover(self, batch: ScheduledBatch) -> None:
        """After a failed model step: forget blocks cached for it and send its sequences back to be recomputed."""
        self.bm.uncache(batch.registered)
        for seq in batch.seqs:
            if seq.status is SequenceStatus.RUNNING:
                self.running.remove(seq)
                self.bm.free(seq.seq_id)
                seq.num_computed_tokens = 0
                self._push_waiting(seq)
