"""Result cache (LRU + TTL, fake clock) and cache keys."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from loopstack.serving import ResultCache, ServingConfigError, cache_key


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_hit_miss_and_hit_rate():
    c = ResultCache(max_entries=10, ttl_s=60, clock=FakeClock())
    assert c.get("a") == (False, None)
    c.put("a", 1)
    assert c.get("a") == (True, 1)
    c.put("n", None)
    assert c.get("n") == (True, None)    # a cached None is a hit
    s = c.stats()
    assert (s["hits"], s["misses"], s["size"]) == (2, 1, 2) and s["hit_rate"] == pytest.approx(2 / 3)


def test_ttl_expires_entries():
    clock = FakeClock()
    c = ResultCache(ttl_s=5, clock=clock)
    c.put("a", 1)
    clock.t = 4.9
    assert c.get("a") == (True, 1)
    clock.t = 5.0
    assert c.get("a") == (False, None)
    assert c.stats()["expirations"] == 1 and len(c) == 0


def test_lru_eviction_keeps_recently_used():
    c = ResultCache(max_entries=2, clock=FakeClock())
    c.put("a", 1)
    c.put("b", 2)
    c.get("a")
    c.put("c", 3)                        # evicts b, the least recently used
    assert c.get("b") == (False, None) and c.get("a") == (True, 1) and c.get("c") == (True, 3)
    assert c.stats()["evictions"] == 1 and c.stats()["size"] == 2


def test_zero_entries_disables_the_cache():
    c = ResultCache(max_entries=0)
    c.put("a", 1)
    assert c.get("a") == (False, None) and len(c) == 0


def test_thread_safe_under_concurrent_use():
    c = ResultCache(max_entries=50)

    def worker(k):
        for i in range(2000):
            c.put((k, i % 100), i)
            c.get((k, (i * 7) % 100))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    s = c.stats()
    assert s["size"] <= 50 and s["hits"] + s["misses"] == 8000


@pytest.mark.parametrize("kwargs", [{"max_entries": -1}, {"ttl_s": 0}, {"max_entries": 1.5}])
def test_bad_cache_settings(kwargs):
    with pytest.raises(ServingConfigError):
        ResultCache(**kwargs)


def test_cache_key_normalizes_inputs():
    k = cache_key("spam", 3, [[1.0, "x"], {"b": [1, 2], "a": 0.5}])
    assert hash(k) == hash(cache_key("spam", 3, ([1.0, "x"], {"a": 0.5, "b": (1, 2)})))
    assert k == cache_key("spam", 3, ((1.0, "x"), {"a": 0.5, "b": [1, 2]}))
    assert k != cache_key("spam", 4, [[1.0, "x"], {"b": [1, 2], "a": 0.5}])   # version is part of the key
    assert k != cache_key("other", 3, [[1.0, "x"], {"b": [1, 2], "a": 0.5}])
    assert cache_key("m", 1, [float("nan")]) == cache_key("m", 1, [float("nan")])
    assert cache_key("m", 1, [-0.0]) == cache_key("m", 1, [0.0])
    assert cache_key("m", 1, [{"a": 1}]) != cache_key("m", 1, [[("a", 1)]])
    assert cache_key("m", 1, [np.array([1.5, 2.0]), np.int64(3)]) == cache_key("m", 1, [[1.5, 2.0], 3])
    assert cache_key("m", 1, [{1, 2}]) == cache_key("m", 1, [{2, 1}])


def test_cache_key_rejects_opaque_objects():
    class Blob:
        __hash__ = None

    with pytest.raises(TypeError, match="Blob"):
        cache_key("m", 1, [Blob()])
