"""Request-facing value types (torch-free): SamplingParams, CompletionOutput, RequestOutput, QueueFullError."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_LOGPROBS = 20
SEED_RANGE = (-(2 ** 63), 2 ** 64)  # what a torch.Generator takes


def _is_int(x: object) -> bool:
    """An int that is not a bool (True is not a count, a seed or a token id)."""
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    """An int or float that is not a bool."""
    return isinstance(x, int | float) and not isinstance(x, bool)


class QueueFullError(RuntimeError):
    """The engine's waiting queue is at its limit; retry later (the server answers 429)."""


@dataclass
class SamplingParams:
    """How to pick each next token and when to stop (vLLM/OpenAI names)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | tuple[str, ...] | str = ()
    stop_token_ids: list[int] | tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    n: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop or ())
        self.stop_token_ids = tuple(self.stop_token_ids or ())

    @property
    def greedy(self) -> bool:
        """Temperature 0 means argmax."""
        return self.temperature == 0.0

    def validate(self) -> None:
        """Raise ValueError naming the bad field and the allowed range."""
        def bad(msg: str) -> ValueError:
            return ValueError(f"invalid sampling parameters: {msg}")

        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise bad(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not _is_number(self.temperature) or not 0.0 <= self.temperature <= 100.0:
            raise bad(f"temperature must be a number in [0, 100] (0 = greedy), got {self.temperature!r}")
        if not _is_int(self.top_k) or (self.top_k < 1 and self.top_k not in (-1, 0)):
            raise bad(f"top_k must be -1 or 0 (disabled) or an integer >= 1, got {self.top_k!r}")
        if not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise bad(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not _is_int(self.seed) or not SEED_RANGE[0] <= self.seed < SEED_RANGE[1]):
            raise bad(f"seed must be None or an integer in [-2**63, 2**64), got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if any(not _is_int(t) or t < 0 for t in self.stop_token_ids):
            raise bad(f"stop_token_ids must be non-negative integers, got {self.stop_token_ids!r}")
        if self.logprobs is not None and (not _is_int(self.logprobs) or
                                          not 0 <= self.logprobs <= MAX_LOGPROBS):
            raise bad(f"logprobs must be None or an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}")
        if not _is_int(self.n) or self.n != 1:
            raise bad(f"only n=1 is supported, got n={self.n!r}; send separate requests instead")


@dataclass
class CompletionOutput:
    """One completion: cumulative text and token ids so far; logprobs[i] maps token id -> logprob for token i."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    logprobs: list[dict[int, float]] | None = None
    index: int = 0


@dataclass
class RequestOutput:
    """A request's state after a step; each carries the cumulative completion (servers diff for deltas)."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    prompt: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
