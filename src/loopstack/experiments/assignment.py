"""Deterministic, sticky assignment of units (users) to buckets and weighted variants.

The hash is blake2b over ``salt + NUL + unit_id`` (UTF-8), so a unit's bucket is the same in every
process, on every machine and in every future version of loopstack: never change it, or every running
experiment reshuffles its users. Different salts give independent populations.
"""
from __future__ import annotations

import hashlib
import math
from typing import Mapping

from loopstack.errors import LoopstackError

#: Resolution of the position used by ``assign`` (weights are honoured to 1 part in a million).
ASSIGN_RESOLUTION = 1_000_000


class AssignmentError(LoopstackError, ValueError):
    """Bad input to bucketing or weighted assignment (empty weights, negative weight, ...)."""


def _hash64(unit_id: str, salt: str) -> int:
    data = str(salt).encode("utf-8") + b"\x00" + str(unit_id).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def bucket(unit_id: str, salt: str, buckets: int = 10_000) -> int:
    """The unit's bucket in ``[0, buckets)`` under ``salt``: uniform, stable across processes and versions."""
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise AssignmentError(f"buckets must be a positive integer, got {buckets!r}")
    return _hash64(unit_id, salt) % buckets


def normalized_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Validate weights (finite, non-negative, sum > 0) and scale them to sum to 1, ordered by name."""
    if not weights:
        raise AssignmentError("weights are empty: give at least one variant with a positive weight")
    clean: dict[str, float] = {}
    for name in sorted(weights, key=str):
        w = weights[name]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise AssignmentError(f"weight of variant {name!r} is {w!r}: weights must be finite numbers >= 0")
        clean[str(name)] = float(w)
    total = sum(clean.values())
    if total <= 0:
        raise AssignmentError(f"weights {dict(weights)!r} sum to 0: give at least one variant a positive weight")
    return {name: w / total for name, w in clean.items()}


def assign(unit_id: str, salt: str, weights: Mapping[str, float]) -> str:
    """The variant of ``unit_id``: weighted by ``weights``, sticky, and independent of the mapping's order.

    Variants are laid out by sorted name on [0, 1); the unit's position is
    ``bucket(unit_id, salt, ASSIGN_RESOLUTION) / ASSIGN_RESOLUTION``. A variant with weight 0 never wins.
    """
    shares = normalized_weights(weights)
    position = bucket(unit_id, salt, ASSIGN_RESOLUTION) / ASSIGN_RESOLUTION
    cumulative = 0.0
    chosen = None
    for name, share in shares.items():
        if share <= 0:
            continue
        chosen = name
        cumulative += share
        if position < cumulative:
            return name
    return chosen  # type: ignore[return-value]  # rounding at the top end: the last positive variant
