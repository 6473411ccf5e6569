"""A bounded result cache (LRU + TTL) keyed by model version and inputs. Pure, injected clock.

Keys include the model version, so a hot-swap never serves the old version's answers; the TTL bounds
how stale an answer can be when the online features behind the same inputs change.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Hashable, Mapping, Sequence

from loopstack.serving.errors import ServingConfigError


class ResultCache:
    """LRU cache with a time-to-live; thread-safe. ``max_entries=0`` disables it (every get misses)."""

    def __init__(self, max_entries: int = 10_000, ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise ServingConfigError(f"cache setting max_entries={max_entries!r} is not allowed: use an integer >= 0")
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not ttl_s > 0:
            raise ServingConfigError(f"cache setting ttl_s={ttl_s!r} is not allowed: use seconds > 0")
        self.max_entries, self.ttl_s, self._clock = max_entries, float(ttl_s), clock
        self._data: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()  # key -> (expires_at, value)
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = self._expirations = 0

    def get(self, key: Hashable) -> tuple[bool, Any]:
        """``(True, value)`` on a fresh hit, else ``(False, None)``; a hit becomes most recently used."""
        now = self._clock()
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                if entry[0] > now:
                    self._data.move_to_end(key)
                    self._hits += 1
                    return True, entry[1]
                del self._data[key]
                self._expirations += 1
            self._misses += 1
            return False, None

    def put(self, key: Hashable, value: Any) -> None:
        """Store (or refresh) a value; evicts the least recently used entries beyond ``max_entries``."""
        if self.max_entries == 0:
            return
        expires = self._clock() + self.ttl_s
        with self._lock:
            self._data[key] = (expires, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
                self._evictions += 1

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def stats(self) -> dict:
        """hits, misses, hit_rate (0 before any lookup), size, evictions (LRU) and expirations (TTL)."""
        with self._lock:
            lookups = self._hits + self._misses
            return {"hits": self._hits, "misses": self._misses, "hit_rate": self._hits / lookups if lookups else 0.0,
                    "size": len(self._data), "max_entries": self.max_entries, "evictions": self._evictions,
                    "expirations": self._expirations}


def _freeze(value: Any) -> Hashable:
    """A hashable, order-stable stand-in for a JSON-like value (lists/tuples -> tuples, dicts -> sorted pairs)."""
    if value is None or isinstance(value, (str, bytes, bool, int)):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return ("__float__", "nan")  # NaN != NaN would never hit
        return value + 0.0  # -0.0 -> 0.0
    if isinstance(value, Mapping):
        items = sorted(((_freeze(k), _freeze(v)) for k, v in value.items()), key=lambda kv: repr(kv[0]))
        return ("__dict__", tuple(items))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return ("__set__", tuple(sorted((_freeze(v) for v in value), key=repr)))
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return _freeze(tolist())
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"cannot build a cache key from a {type(value).__name__}: pass JSON-like inputs "
                        "(numbers, strings, lists, dicts)") from None
    return value


def cache_key(model: str, version: int, inputs: Sequence[Any]) -> Hashable:
    """Key of one prediction: ``(model, version, frozen inputs)``; equal inputs give equal keys.

    Numbers compare by value (1, 1.0 and True give the same key, as they give the same model input).
    """
    return (model, int(version), _freeze(inputs))
