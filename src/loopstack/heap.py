"""Garbage-collector settings for a process that only serves (`loopstack serve`, `features serve`, `llm serve`).

A server keeps a large, long-lived heap (the app, views, libraries, loaded models) and makes many small,
short-lived containers per request (parsed bodies, answers, prediction-log records waiting for the
writer). With the default settings the survivors promoted from the young generations make full
collections walk the whole heap: on the feature server, ~35 % of its CPU and pauses of 50-150 ms at
100-entity reads (measured).
`gc.freeze` moves what is alive now out of the collector's way for good; reference counting still frees
every request's objects at once, only cyclic garbage waits for a collection.
"""
from __future__ import annotations

import gc


def tune_gc(gen0_threshold: int = 20_000) -> None:
    """Collect once, freeze the heap as it is, and raise the young generation's threshold to at least
    `gen0_threshold` more live containers, so one request's objects do not set off several collections.
    Call once the server has loaded what it serves (never lowers a higher threshold)."""
    gc.collect()
    gc.freeze()
    g0, g1, g2 = gc.get_threshold()
    gc.set_threshold(max(g0, gen0_threshold), g1, g2)


def freeze_new() -> None:
    """Freeze what was loaded since (e.g. a model version hot-swapped in): no collection, so no pause."""
    gc.freeze()
