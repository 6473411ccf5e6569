"""The pure batching rule and its configuration."""
from __future__ import annotations

import pytest

from loopstack.serving import BatchConfig, ServingConfigError, decide

CFG = BatchConfig(max_batch_size=8, max_latency_ms=10.0)
PREF = BatchConfig(max_batch_size=32, max_latency_ms=10.0, preferred_batch_sizes=(16, 8))


def test_full_batch_fires_at_once():
    assert decide(CFG, 8, 0.0) == (8, "full")
    assert decide(CFG, 50, 0.0) == (8, "full")


def test_waits_for_the_rest_of_the_budget():
    assert decide(CFG, 3, 0.004) == pytest.approx(0.006)
    assert decide(CFG, 0, 0.0) == pytest.approx(0.010)


def test_waited_out_takes_what_is_there():
    assert decide(CFG, 3, 0.010) == (3, "waited_out")
    assert decide(CFG, 3, 1.0) == (3, "waited_out")


def test_preferred_size_fires_after_half_the_budget():
    assert PREF.preferred_batch_sizes == (8, 16)   # sorted
    assert decide(PREF, 10, 0.002) == pytest.approx(0.003)    # a preferred size fits: wait to budget/2
    assert decide(PREF, 10, 0.005) == (8, "preferred")
    assert decide(PREF, 20, 0.006) == (16, "preferred")       # the largest preferred size that fits
    assert decide(PREF, 5, 0.006) == pytest.approx(0.004)     # none fits: wait the whole budget
    assert decide(PREF, 5, 0.010) == (5, "waited_out")
    assert decide(PREF, 32, 0.0) == (32, "full")


def test_zero_latency_turns_waiting_off():
    assert BatchConfig(max_latency_ms=600_000).max_latency_ms == 600_000   # the longest request deadline
    cfg = BatchConfig(max_batch_size=4, max_latency_ms=0)
    assert decide(cfg, 1, 0.0) == (1, "waited_out")


@pytest.mark.parametrize("kwargs,key", [
    ({"max_batch_size": 0}, "max_batch_size"), ({"max_batch_size": 2.0}, "max_batch_size"),
    ({"max_latency_ms": -1}, "max_latency_ms"), ({"max_latency_ms": float("inf")}, "max_latency_ms"),
    ({"max_latency_ms": float("nan")}, "max_latency_ms"),
    # a wait past the platform's longest timed wait killed the batcher's worker (OverflowError): every
    # request then waited out its deadline
    ({"max_latency_ms": 1e300}, r"max_latency_ms=1e\+300 is not allowed: use a number of milliseconds from 0 "
                                r"to 600_000"),
    ({"max_latency_ms": 600_001}, "max_latency_ms"),
    ({"max_queue": 0}, "max_queue"), ({"preferred_batch_sizes": (0,)}, "preferred_batch_sizes"),
    ({"max_batch_size": 8, "preferred_batch_sizes": (16,)}, "preferred_batch_sizes"),
])
def test_bad_config_names_the_key(kwargs, key):
    with pytest.raises(ServingConfigError, match=key) as err:
        BatchConfig(**kwargs)
    assert isinstance(err.value, ValueError)
