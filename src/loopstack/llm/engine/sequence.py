"""A request's token sequence and its lifecycle state (torch-free)."""

from __future__ import annotations

import enum
import time
from typing import Any

from loopstack.llm.engine.params import SamplingParams


class SequenceStatus(enum.Enum):
    """Where a sequence is: queued (also after preemption), running, or finished and why."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        """True for the three finished states."""
        return self not in (SequenceStatus.WAITING, SequenceStatus.RUNNING)


class Sequence:
    """Prompt plus generated tokens; num_computed_tokens counts tokens whose K/V are in the cache."""

    def __init__(self, seq_id: int, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 priority: int = 0, arrival: int = 0, prompt: str | None = None) -> None:
        self.seq_id = seq_id
        self.request_id = request_id
        self.prompt = prompt
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.priority = priority
        self.arrival = arrival  # FCFS order among equal priorities (monotonic counter)
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        self.num_preemptions = 0
        self.draft_tokens: list[int] = []  # speculative proposal for the current step
        self.logprobs: list[dict[int, float]] | None = [] if params.logprobs is not None else None
        self.output_text = ""
        self.detokenizer: Any = None  # set by the engine (incremental decoder)
        self.generator: Any = None  # per-request torch.Generator when params.seed is set
        self.arrival_time = time.perf_counter()
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.finish_time: float | None = None

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        """Generated tokens so far."""
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        """Generated token ids (a copy)."""
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def prompt_token_ids(self) -> list[int]:
        """Prompt token ids (a copy)."""
        return self.token_ids[:self.num_prompt_tokens]

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens not yet in the KV cache (1 for a sequence in decode)."""
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_prefilling(self) -> bool:
        """More than one token still to compute (prompt, or the whole history after a preemption)."""
        return len(self.token_ids) - self.num_computed_tokens > 1

    @property
    def is_finished(self) -> bool:
        """Stopped, hit a length limit, or aborted."""
        return self.status.finished

    @property
    def remaining_tokens(self) -> int:
        """How many more tokens max_tokens allows."""
        return self.params.max_tokens - self.num_output_tokens

    def sort_key(self) -> tuple[int, int]:
        """Scheduling order: lower priority number first, then first come first served."""
        return (self.priority, self.arrival)

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, req={self.request_id!r}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, status={self.status.value})")
