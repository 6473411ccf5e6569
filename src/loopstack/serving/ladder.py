"""Graceful degradation: a circuit breaker per model and the ladder of rungs to try. Pure, injected clock.

The breaker watches a rolling time window (error rate, and optionally a latency quantile) and opens when
the model is failing, so requests go straight to the next rung instead of waiting on a broken model.
After ``open_s`` it lets a few probe requests through (half-open); if they all succeed it closes again.
"""
from __future__ import annotations

import bisect
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from loopstack.serving.errors import ServingConfigError

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
RUNG_NAMES: tuple[str, ...] = ("model", "fallback", "baseline")

# Latency histogram bin edges (seconds): log-spaced, 10 per decade from 10 us to 1000 s. Each window
# bucket keeps one count per bin, so memory is constant however many requests arrive.
_EDGES: tuple[float, ...] = tuple(10 ** (e / 10) for e in range(-50, 31))
_N_SLOTS = 10  # window buckets


class _Slot:
    """Counts of one time slice of the window."""
    __slots__ = ("epoch", "requests", "errors", "latency")

    def __init__(self) -> None:
        self.epoch = -1
        self.requests = 0
        self.errors = 0
        self.latency = [0] * (len(_EDGES) + 1)

    def reset(self, epoch: int) -> None:
        self.epoch, self.requests, self.errors = epoch, 0, 0
        self.latency = [0] * (len(_EDGES) + 1)


def _quantile(counts: list[int], total: int, q: float) -> float | None:
    """Upper edge of the histogram bin holding quantile ``q`` (a conservative estimate); None if empty."""
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for i, c in enumerate(counts):
        seen += c
        if seen >= rank:
            return _EDGES[i] if i < len(_EDGES) else math.inf
    return math.inf


class CircuitBreaker:
    """Rolling-window breaker: closed -> open (error rate or latency) -> half_open (probes) -> closed.

    Trips when the window holds at least ``min_requests`` and the error rate exceeds ``max_error_rate`` or
    the ``latency_quantile`` of latency exceeds ``max_latency_s``. In half-open, up to ``half_open_probes``
    requests are let through: all succeeding (and, with a latency limit, within it) closes the breaker
    with a fresh window; any failure re-opens it. Probes that never report (caller crashed) are forgotten
    after another ``open_s``, so the breaker cannot stay half-open forever. Thread-safe.
    """

    def __init__(self, window_s: float = 10.0, min_requests: int = 20, max_error_rate: float = 0.5,
                 max_latency_s: float | None = None, latency_quantile: float = 0.99, open_s: float = 5.0,
                 half_open_probes: int = 3, clock: Callable[[], float] = time.monotonic):
        def check(key: str, ok: bool, allowed: str, value: object) -> None:
            if not ok:
                raise ServingConfigError(f"circuit breaker setting {key}={value!r} is not allowed: use {allowed}")

        check("window_s", _pos(window_s), "a number of seconds > 0", window_s)
        check("min_requests", isinstance(min_requests, int) and min_requests >= 1, "an integer >= 1", min_requests)
        check("max_error_rate", _num(max_error_rate) and 0 <= max_error_rate <= 1, "a fraction from 0 to 1",
              max_error_rate)
        check("max_latency_s", max_latency_s is None or _pos(max_latency_s), "seconds > 0 or None", max_latency_s)
        check("latency_quantile", _num(latency_quantile) and 0 < latency_quantile <= 1, "a quantile in (0, 1]",
              latency_quantile)
        check("open_s", _num(open_s) and open_s >= 0, "a number of seconds >= 0", open_s)
        check("half_open_probes", isinstance(half_open_probes, int) and half_open_probes >= 1, "an integer >= 1",
              half_open_probes)
        self.window_s, self.min_requests, self.max_error_rate = float(window_s), min_requests, float(max_error_rate)
        self.max_latency_s, self.latency_quantile = max_latency_s, float(latency_quantile)
        self.open_s, self.half_open_probes, self._clock = float(open_s), half_open_probes, clock
        self._slot_s = self.window_s / _N_SLOTS
        self._slots = [_Slot() for _ in range(_N_SLOTS)]
        self._lock = threading.Lock()
        self._state = CLOSED
        self._opened_at = 0.0
        self._opened_count = 0
        self._probes_issued = self._probes_ok = 0
        self._half_open_since = 0.0
        self._last_reason = ""

    # ------------------------------------------------------------------ state machine
    @property
    def state(self) -> str:
        """"closed" | "open" | "half_open" (an open breaker turns half-open once ``open_s`` has passed)."""
        with self._lock:
            return self._advance_locked(self._clock())

    def _advance_locked(self, now: float) -> str:
        if self._state == OPEN and now - self._opened_at >= self.open_s:
            self._state, self._half_open_since = HALF_OPEN, now
            self._probes_issued = self._probes_ok = 0
        elif self._state == HALF_OPEN and self._probes_issued >= self.half_open_probes \
                and now - self._half_open_since >= max(self.open_s, self.window_s / _N_SLOTS):
            self._half_open_since = now  # lost probes: start a new round
            self._probes_issued = self._probes_ok = 0
        return self._state

    def available(self) -> bool:
        """Would ``allow`` say yes right now? Does not take a half-open probe slot."""
        with self._lock:
            state = self._advance_locked(self._clock())
            return state == CLOSED or (state == HALF_OPEN and self._probes_issued < self.half_open_probes)

    def allow(self) -> bool:
        """May a request go to this model now? In half-open this takes one of the probe slots."""
        with self._lock:
            state = self._advance_locked(self._clock())
            if state == CLOSED:
                return True
            if state == HALF_OPEN and self._probes_issued < self.half_open_probes:
                self._probes_issued += 1
                return True
            return False

    def record(self, ok: bool, latency_s: float) -> None:
        """Report one request's outcome (``ok=False``: it raised or timed out) and its latency."""
        now = self._clock()
        slow = self.max_latency_s is not None and latency_s > self.max_latency_s
        with self._lock:
            state = self._advance_locked(now)
            if state == OPEN:
                return  # a request admitted before the breaker opened; the decision is already made
            if state == HALF_OPEN:
                if ok and not slow:
                    self._probes_ok += 1
                    if self._probes_ok >= self.half_open_probes:
                        self._state = CLOSED
                        for slot in self._slots:
                            slot.reset(-1)
                else:
                    self._open_locked(now, "a half-open probe failed" if not ok else
                                      f"a half-open probe took {latency_s:.3f}s > {self.max_latency_s}s")
                return
            slot = self._slot_locked(now)
            slot.requests += 1
            slot.errors += 0 if ok else 1
            slot.latency[bisect.bisect_left(_EDGES, max(0.0, latency_s))] += 1
            if ok and self.max_latency_s is None:
                return   # a success never opens the breaker: skip the window sums (the per-request cost)
            requests, errors, counts = self._window_locked(now, latency=self.max_latency_s is not None)
            if requests < self.min_requests:
                return
            rate = errors / requests
            if rate > self.max_error_rate:
                self._open_locked(now, f"error rate {rate:.0%} over the last {self.window_s:g}s > "
                                       f"{self.max_error_rate:.0%}")
            elif self.max_latency_s is not None:
                p = _quantile(counts, requests, self.latency_quantile)
                if p is not None and p > self.max_latency_s:
                    self._open_locked(now, f"p{self.latency_quantile * 100:g} latency ~{p:.3f}s over the last "
                                           f"{self.window_s:g}s > {self.max_latency_s}s")

    def _open_locked(self, now: float, reason: str) -> None:
        self._state, self._opened_at, self._last_reason = OPEN, now, reason
        self._opened_count += 1
        self._probes_issued = self._probes_ok = 0

    # ------------------------------------------------------------------ rolling window
    def _slot_locked(self, now: float) -> _Slot:
        epoch = int(now // self._slot_s)
        slot = self._slots[epoch % _N_SLOTS]
        if slot.epoch != epoch:
            slot.reset(epoch)
        return slot

    def _window_locked(self, now: float, latency: bool = True) -> tuple[int, int, list[int]]:
        """Totals over the slots inside the window; the merged latency histogram only when asked."""
        current = int(now // self._slot_s)
        requests = errors = 0
        counts = [0] * (len(_EDGES) + 1)
        for slot in self._slots:
            if current - _N_SLOTS < slot.epoch <= current:
                requests += slot.requests
                errors += slot.errors
                if not latency:
                    continue
                for i, c in enumerate(slot.latency):
                    if c:
                        counts[i] += c
        return requests, errors, counts

    def snapshot(self) -> dict:
        """State and window numbers for metrics and /readyz."""
        with self._lock:
            now = self._clock()
            state = self._advance_locked(now)
            requests, errors, counts = self._window_locked(now)
            return {"state": state, "requests": requests, "errors": errors,
                    "error_rate": errors / requests if requests else 0.0,
                    "p_latency": _quantile(counts, requests, self.latency_quantile),
                    "latency_quantile": self.latency_quantile, "opened_count": self._opened_count,
                    "last_trip_reason": self._last_reason}


def _num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pos(x: object) -> bool:
    return _num(x) and x > 0  # type: ignore[operator]


@dataclass(frozen=True)
class Rung:
    """One step of the degradation ladder: ``name`` ("model" | "fallback" | "baseline") and its time budget."""
    name: str
    budget_s: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ServingConfigError(f"a ladder rung needs a name such as {', '.join(RUNG_NAMES)}, got {self.name!r}")
        if not _num(self.budget_s) or self.budget_s < 0:
            raise ServingConfigError(f"ladder rung {self.name!r} has budget_s={self.budget_s!r}: use seconds >= 0")


def plan_rungs(rungs: Sequence[Rung], breakers: Mapping[str, CircuitBreaker]) -> list[Rung]:
    """The rungs to try, in order: those without a breaker or whose breaker is available (not open).

    Uses ``CircuitBreaker.available`` so planning takes no half-open probe slot; call ``allow`` on a
    rung's breaker just before trying it and ``record`` after. The last rung (the static baseline) is
    always kept even if its breaker is open, so the ladder never comes up empty.
    """
    planned = [r for r in rungs if (b := breakers.get(r.name)) is None or b.available()]
    if rungs and (not planned or planned[-1] is not rungs[-1]):
        planned.append(rungs[-1])
    return planned
