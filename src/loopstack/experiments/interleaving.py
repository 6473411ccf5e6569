"""Team-draft interleaving: compare two rankers on the same queries with far fewer users than an A/B.

Each query shows one merged list (Radlinski, Kurup & Joachims, "How does clickthrough data reflect
retrieval quality?", CIKM 2008). Like picking teams in a playground: the team with fewer picks so
far picks next (a coin flip on ties) and adds its highest-ranked result not yet shown. When one
ranker has nothing new left, the other fills the remaining slots. Each shown result remembers
which team put it there; a click credits that team. A query is won by the team with more clicked
results (a tie if equal, including no clicks).

Because both rankers face the same user and query, the per-query comparison removes between-user
variance, which is why interleaving needs one to two orders of magnitude fewer queries than an A/B
test on a click metric. The preference is tested with a two-sided sign test (exact binomial,
p = 1/2) over non-tied queries; ``delta = (wins_b - wins_a) / queries`` is the usual effect size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Sequence

import numpy as np

from loopstack.experiments.statistics import ExperimentError, _check_alpha, _check_count


@dataclass(frozen=True)
class Interleaving:
    """The merged list and, per position, the team ("A" or "B") that contributed it."""

    items: tuple[Hashable, ...]
    teams: tuple[str, ...]

    def credit(self, clicked_positions: Iterable[int]) -> tuple[int, int]:
        """(clicks credited to A, clicks credited to B) for clicked 0-based positions in `items`."""
        a = b = 0
        for pos in set(clicked_positions):
            if not 0 <= pos < len(self.items):
                raise ExperimentError(f"clicked position {pos} is outside the shown list of {len(self.items)}")
            if self.teams[pos] == "A":
                a += 1
            else:
                b += 1
        return a, b

    def outcome(self, clicked_positions: Iterable[int]) -> str:
        """"A", "B" or "tie" for one query's clicks."""
        a, b = self.credit(clicked_positions)
        return "A" if a > b else "B" if b > a else "tie"


def team_draft(ranking_a: Sequence[Hashable], ranking_b: Sequence[Hashable], *, length: int | None = None,
               rng: np.random.Generator | int | None = None) -> Interleaving:
    """Interleave two rankings by team draft. Deterministic for a given ``rng`` seed or Generator.

    ``length`` defaults to the number of distinct items. For per-query determinism in production,
    seed with a stable hash of (experiment, query id), e.g. `assignment.bucket`.
    """
    if length is not None and (isinstance(length, bool) or _check_count(length, "length") < 1):
        raise ExperimentError(f"length must be a whole number >= 1 (results to show), got {length!r}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    distinct = len(set(ranking_a) | set(ranking_b))
    k = distinct if length is None else min(int(length), distinct)
    shown: set = set()
    items: list = []
    teams: list[str] = []
    ia = ib = 0
    picks = {"A": 0, "B": 0}
    while len(items) < k:
        while ia < len(ranking_a) and ranking_a[ia] in shown:
            ia += 1
        while ib < len(ranking_b) and ranking_b[ib] in shown:
            ib += 1
        a_left, b_left = ia < len(ranking_a), ib < len(ranking_b)
        if not (a_left or b_left):
            break
        if a_left and b_left:
            if picks["A"] != picks["B"]:
                team = "A" if picks["A"] < picks["B"] else "B"
            else:
                team = "A" if gen.random() < 0.5 else "B"
        else:
            team = "A" if a_left else "B"
        item = ranking_a[ia] if team == "A" else ranking_b[ib]
        items.append(item)
        teams.append(team)
        shown.add(item)
        picks[team] += 1
    return Interleaving(tuple(items), tuple(teams))


@dataclass(frozen=True)
class InterleavingResult:
    """Wins per ranker over queries, the sign-test p-value and the preferred ranker (if significant)."""

    wins_a: int
    wins_b: int
    ties: int
    p_value: float
    alpha: float

    @property
    def queries(self) -> int:
        return self.wins_a + self.wins_b + self.ties

    @property
    def delta(self) -> float:
        """(wins_b - wins_a) / queries: > 0 means B is preferred."""
        return (self.wins_b - self.wins_a) / self.queries if self.queries else math.nan

    @property
    def preferred(self) -> str | None:
        if self.p_value >= self.alpha or self.wins_a == self.wins_b:
            return None
        return "B" if self.wins_b > self.wins_a else "A"

    def to_dict(self) -> dict[str, Any]:
        return {"wins_a": self.wins_a, "wins_b": self.wins_b, "ties": self.ties, "queries": self.queries,
                "delta": None if math.isnan(self.delta) else self.delta, "p_value": self.p_value,
                "alpha": self.alpha, "preferred": self.preferred}


def sign_test(wins_a: int, wins_b: int) -> float:
    """Two-sided exact binomial (sign) test of wins_a vs wins_b with p = 1/2; 1.0 with no decided queries."""
    n = _check_count(wins_a, "wins_a") + _check_count(wins_b, "wins_b")
    if n == 0:
        return 1.0
    from scipy.stats import binomtest
    return float(binomtest(wins_b, n, 0.5, alternative="two-sided").pvalue)


def preference_test(outcomes: Iterable[str], *, alpha: float = 0.05) -> InterleavingResult:
    """Sign test over per-query outcomes ("A", "B" or "tie")."""
    _check_alpha(alpha)
    counts = {"A": 0, "B": 0, "tie": 0}
    for o in outcomes:
        if o not in counts:
            raise ExperimentError(f"outcome {o!r} is not 'A', 'B' or 'tie'")
        counts[o] += 1
    return InterleavingResult(counts["A"], counts["B"], counts["tie"], sign_test(counts["A"], counts["B"]), alpha)


def sample_size_sign_test(win_share_b: float, tie_share: float = 0.0, *, alpha: float = 0.05,
                          power: float = 0.8) -> int:
    """Queries needed for the two-sided sign test to detect that B wins ``win_share_b`` of decided
    queries (normal approximation), when ``tie_share`` of queries are ties. Plan with pilot rates."""
    if not 0 < win_share_b < 1 or win_share_b == 0.5:
        raise ExperimentError(f"win_share_b must be in (0, 1) and not 0.5, got {win_share_b!r}")
    if not 0 <= tie_share < 1:
        raise ExperimentError(f"tie_share must be in [0, 1), got {tie_share!r}")
    _check_alpha(alpha)
    _check_alpha(power, "power")
    from scipy.special import ndtri
    p = win_share_b
    decided = ((ndtri(1 - alpha / 2) * 0.5 + ndtri(power) * math.sqrt(p * (1 - p))) / (p - 0.5)) ** 2
    return math.ceil(decided / (1 - tie_share))
