"""The batching policy (pure): a model's batching settings (``BatchConfig``) and the rule that decides when a
batch fires (``decide``). The edge that runs it, with the queue and the worker thread, is ``batcher.py``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loopstack.serving.errors import ServingConfigError

REASONS: tuple[str, ...] = ("full", "waited_out", "preferred")
MAX_LATENCY_MS = 600_000   # the longest deadline a request can have (deadline_ms)


@dataclass(frozen=True)
class BatchConfig:
    """How one model's requests are batched. ``max_batch_size=1`` (or ``max_latency_ms=0``) turns batching off."""
    max_batch_size: int = 32
    max_latency_ms: float = 5.0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue: int = 1024

    def __post_init__(self) -> None:
        def bad(key: str, value: Any, allowed: str) -> ServingConfigError:
            return ServingConfigError(f"batching setting {key}={value!r} is not allowed: use {allowed}")

        if isinstance(self.max_batch_size, bool) or not isinstance(self.max_batch_size, int) \
                or self.max_batch_size < 1:
            raise bad("max_batch_size", self.max_batch_size, "an integer >= 1")
        lat = self.max_latency_ms
        # at most the longest request deadline: a huge wait overflowed the worker's timed wait and killed it
        if isinstance(lat, bool) or not isinstance(lat, (int, float)) or not 0 <= lat <= MAX_LATENCY_MS:
            raise bad("max_latency_ms", lat, f"a number of milliseconds from 0 to {MAX_LATENCY_MS:_}")
        if isinstance(self.max_queue, bool) or not isinstance(self.max_queue, int) or self.max_queue < 1:
            raise bad("max_queue", self.max_queue, "an integer >= 1")
        sizes = tuple(self.preferred_batch_sizes)
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= self.max_batch_size:
                raise bad("preferred_batch_sizes", self.preferred_batch_sizes,
                          f"integers between 1 and max_batch_size ({self.max_batch_size})")
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(set(sizes))))


def decide(cfg: BatchConfig, queued: int, oldest_wait_s: float) -> tuple[int, str] | float:
    """Fire now -> ``(n_to_take, reason)``; otherwise -> seconds to wait before deciding again. Pure.

    Rules, first match wins (budget = ``max_latency_ms / 1000``):

    1. ``queued >= max_batch_size`` -> ``(max_batch_size, "full")``;
    2. ``oldest_wait_s >= budget`` -> ``(queued, "waited_out")`` (the oldest request spent its budget);
    3. preferred sizes given, ``p`` = the largest preferred size ``<= queued``, and
       ``oldest_wait_s >= budget / 2`` -> ``(p, "preferred")``: half the budget passed without the batch
       filling, so run a size the model is efficient at now rather than wait out the rest;
    4. otherwise wait until the next rule could fire: ``budget/2 - oldest_wait_s`` when a preferred size is
       reachable and not yet due, else ``budget - oldest_wait_s``.

    An empty queue returns the full budget (the caller normally sleeps until a request arrives instead).
    """
    budget = cfg.max_latency_ms / 1000.0
    if queued <= 0:
        return budget
    if queued >= cfg.max_batch_size:
        return cfg.max_batch_size, "full"
    if oldest_wait_s >= budget:
        return queued, "waited_out"
    fitting = [p for p in cfg.preferred_batch_sizes if p <= queued]
    if fitting:
        half = budget / 2.0
        if oldest_wait_s >= half:
            return fitting[-1], "preferred"
        return half - oldest_wait_s
    return budget - oldest_wait_s
