"""How a dataset is split into train and evaluation parts: by time (the default), or at random on request.

A temporal split evaluates on the future, the way the model will be used: train on the weeks before
T, evaluate on the week after. A random split mixes the same days (and the same bursts of one
spammer) into both parts, so offline metrics come out optimistic; it is available, with a warning.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from loopstack.errors import LoopstackError
from loopstack.timeutil import ensure_utc, parse_duration

TRAIN, EVAL, OUTSIDE = "train", "eval", "outside"


class LeakageWarning(UserWarning):
    """A choice that lets information from the evaluation period leak into training."""


def to_utc(value: Any, what: str) -> datetime:
    """A datetime, pandas Timestamp or ISO 8601 string as an aware UTC datetime."""
    if isinstance(value, datetime):
        return ensure_utc(value)
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise LoopstackError(f"{what} = {value!r} is not a time: give a datetime or an ISO 8601 string "
                             "like '2026-11-08T00:00:00Z'") from exc
    if pd.isna(ts):
        raise LoopstackError(f"{what} must be a time, got {value!r}")
    return ensure_utc(ts.to_pydatetime())


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _check_weeks(name: str, weeks: Any, hint: str = "") -> None:
    """A week count of `TemporalSplit.weekly` must be a finite number > 0 (0 weeks is an empty part)."""
    if isinstance(weeks, bool) or not isinstance(weeks, (int, float)) or not 0 < weeks < float("inf"):
        raise LoopstackError(f"TemporalSplit.weekly: {name} = {weeks!r} must be a number of weeks > 0{hint}")


@dataclass(frozen=True)
class TemporalSplit:
    """Rows with train_start <= t < train_end train; rows with eval_start <= t < eval_end evaluate.

    `eval_start` defaults to `train_end`; a later `eval_start` leaves a gap (an embargo) between the
    parts. `None` bounds are open. Rows outside both ranges are left out and counted.
    """

    train_end: Any
    eval_start: Any = None
    eval_end: Any = None
    train_start: Any = None

    def __post_init__(self) -> None:
        conv = {k: (to_utc(getattr(self, k), f"TemporalSplit.{k}") if getattr(self, k) is not None else None)
                for k in ("train_end", "eval_start", "eval_end", "train_start")}
        if conv["train_end"] is None:
            raise LoopstackError("TemporalSplit needs train_end (e.g. TemporalSplit.weekly('2026-11-08'))")
        if conv["eval_start"] is None:
            conv["eval_start"] = conv["train_end"]
        for k, v in conv.items():
            object.__setattr__(self, k, v)
        if self.eval_start < self.train_end:
            raise LoopstackError(
                f"TemporalSplit: eval_start {self.eval_start.isoformat()} is before train_end "
                f"{self.train_end.isoformat()}, so the parts overlap in time; evaluate on later data only")
        if self.eval_end is not None and self.eval_end <= self.eval_start:
            raise LoopstackError("TemporalSplit: eval_end must be after eval_start")
        if self.train_start is not None and self.train_start >= self.train_end:
            raise LoopstackError("TemporalSplit: train_start must be before train_end")

    @classmethod
    def weekly(cls, T: Any, train_weeks: int | None = None, eval_weeks: int = 1) -> "TemporalSplit":
        """Train on the weeks before T (all of them, or the last `train_weeks`), evaluate on the week after."""
        t = to_utc(T, "TemporalSplit.weekly(T)")
        if train_weeks is not None:
            _check_weeks("train_weeks", train_weeks, " (or None: every week before T)")
        _check_weeks("eval_weeks", eval_weeks)
        start = t - timedelta(weeks=train_weeks) if train_weeks is not None else None
        return cls(train_end=t, eval_start=t, eval_end=t + timedelta(weeks=eval_weeks), train_start=start)

    @classmethod
    def last(cls, times: pd.Series, eval_window: str | timedelta = "7d") -> "TemporalSplit":
        """The default: evaluate on the last `eval_window` of the data, train on everything before."""
        end = times.max().to_pydatetime()
        t = end - parse_duration(eval_window)
        return cls(train_end=t, eval_start=t, eval_end=None)

    def assign(self, times: pd.Series, frame: pd.DataFrame | None = None) -> np.ndarray:
        """'train' / 'eval' / 'outside' for each time (tz-aware UTC series)."""
        t = times
        train = t < pd.Timestamp(self.train_end)
        if self.train_start is not None:
            train &= t >= pd.Timestamp(self.train_start)
        ev = t >= pd.Timestamp(self.eval_start)
        if self.eval_end is not None:
            ev &= t < pd.Timestamp(self.eval_end)
        return np.where(train.to_numpy(), TRAIN, np.where(ev.to_numpy(), EVAL, OUTSIDE))

    def describe(self) -> dict:
        return {"kind": "temporal", "train_start": _iso(self.train_start), "train_end": _iso(self.train_end),
                "eval_start": _iso(self.eval_start), "eval_end": _iso(self.eval_end)}


@dataclass(frozen=True)
class RandomSplit:
    """A random split (a `fraction` of rows evaluate), stable per row for a given seed.

    Only for when time genuinely does not matter: it warns with a `LeakageWarning` when used.
    """

    seed: int = 0
    fraction: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) \
                or not 0.0 < float(self.fraction) < 1.0:
            raise LoopstackError(f"RandomSplit.fraction = {self.fraction!r}: give the evaluation share, 0 < f < 1")

    def assign(self, times: pd.Series, frame: pd.DataFrame | None = None) -> np.ndarray:
        warnings.warn(
            "RandomSplit mixes the same days into train and eval: rows from one burst (one spammer, one "
            "outage) land on both sides and features computed near the evaluation time leak into training, "
            "so offline metrics come out optimistic. Production predicts the future; use "
            "TemporalSplit.weekly(T) (train on the weeks before T, evaluate on the week after) unless time "
            "truly does not matter.", LeakageWarning, stacklevel=4)
        # per-row hash of its content: the same row gets the same side whatever else is in the frame
        key = f"{int(self.seed) & 0xFFFFFFFFFFFF:016x}"[-16:]
        source = frame if frame is not None else times.to_frame()
        h = pd.util.hash_pandas_object(source, index=False, hash_key=key).to_numpy(dtype=np.uint64)
        u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        return np.where(u < float(self.fraction), EVAL, TRAIN)

    def describe(self) -> dict:
        return {"kind": "random", "seed": int(self.seed), "fraction": float(self.fraction)}


Split = TemporalSplit | RandomSplit
