"""Team-draft interleaving: the draft, credit, sign test, and its sensitivity against an A/B test."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from loopstack.experiments import (ExperimentError, Interleaving, power_means, preference_test,
                                   sample_size_means, sample_size_sign_test, sign_test, team_draft)


def test_team_draft_alternates_fairly_and_is_deterministic():
    a, b = ["a1", "a2", "a3", "x", "a5"], ["b1", "x", "b3", "a1", "b5"]
    il = team_draft(a, b, rng=42)
    assert il == team_draft(a, b, rng=42)                           # same seed, same list
    assert len(il.items) == len(set(a) | set(b)) == len(set(il.items))
    counts = [il.teams[:i].count("A") - il.teams[:i].count("B") for i in range(0, len(il.teams) + 1, 2)]
    assert all(abs(c) <= 1 for c in counts)                          # teams stay balanced pair by pair
    for item, team in zip(il.items, il.teams):                       # each pick is its team's best remaining
        ranking = a if team == "A" else b
        shown_before = set(il.items[: il.items.index(item)])
        assert item == next(x for x in ranking if x not in shown_before)
    assert set(team_draft(a, b, rng=1).items[:2]) == {"a1", "b1"}


def test_identical_rankings_keep_the_order_and_split_the_credit():
    r = list(range(10))
    il = team_draft(r, r, rng=0)
    assert list(il.items) == r and il.teams.count("A") == il.teams.count("B") == 5


def test_one_ranking_runs_out_and_the_other_fills():
    il = team_draft(["a"], ["b", "c", "d"], rng=0)
    assert set(il.items) == {"a", "b", "c", "d"} and il.teams.count("A") == 1
    assert len(team_draft(list("abcdef"), list("fedcba"), length=3, rng=0).items) == 3


def test_credit_and_outcome():
    il = Interleaving(("a", "b", "c", "d"), ("A", "B", "B", "A"))
    assert il.credit([0, 1, 2]) == (1, 2) and il.outcome([0, 1, 2]) == "B"
    assert il.outcome([]) == "tie" and il.outcome([0, 0]) == "A"
    with pytest.raises(ExperimentError, match="outside the shown list"):
        il.credit([7])


def test_sign_test_matches_scipy_binomtest():
    r = preference_test(["A"] * 40 + ["B"] * 60 + ["tie"] * 25)
    assert r.p_value == pytest.approx(stats.binomtest(60, 100, 0.5).pvalue)
    assert r.queries == 125 and r.delta == pytest.approx(20 / 125) and r.preferred is None   # p = 0.057
    assert preference_test(["B"] * 70 + ["A"] * 30).preferred == "B"
    assert sign_test(0, 0) == 1.0
    with pytest.raises(ExperimentError, match="outcome"):
        preference_test(["C"])


# -- sensitivity: a position-based click model with heterogeneous users -------------------------
ATTRACT = np.array([0.05, 0.2, 0.5, 0.8])                 # click probability by relevance grade 0..3
EXAMINE = 1 / np.arange(1, 11)                             # probability of looking at rank k (PBM)


def simulate(queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per query: clicks ranker A would get, clicks B would get, and the interleaved outcome.

    Ten documents with graded relevance; both rankers sort relevance plus noise, B with less noise.
    Users differ in how readily they click (Beta(0.5, 0.5)): that between-user variance is what an
    A/B test must average out and what interleaving, comparing both rankers for the same user and
    query, cancels.
    """
    rng = np.random.default_rng(seed)
    clicks_a, clicks_b, outcomes = np.zeros(queries), np.zeros(queries), []
    for q in range(queries):
        rel = rng.choice(4, size=10, p=[0.5, 0.25, 0.15, 0.1])
        propensity = rng.beta(0.5, 0.5)
        ranking_a = list(np.argsort(-(rel + rng.normal(0, 1.5, 10))))
        ranking_b = list(np.argsort(-(rel + rng.normal(0, 1.0, 10))))

        clicks_a[q] = len(_clicks(ranking_a, rel, propensity, rng))
        clicks_b[q] = len(_clicks(ranking_b, rel, propensity, rng))
        il = team_draft(ranking_a, ranking_b, rng=rng)
        outcomes.append(il.outcome(_clicks(il.items, rel, propensity, rng)))
    return clicks_a, clicks_b, outcomes


def _clicks(shown, rel: np.ndarray, propensity: float, rng: np.random.Generator) -> np.ndarray:
    """Clicked positions: rank k is examined with probability 1/k, clicked by its relevance."""
    return np.flatnonzero(rng.random(10) < propensity * EXAMINE * ATTRACT[rel[list(shown)]])


def test_interleaving_needs_far_fewer_queries_than_an_ab_test():
    a, b, outcomes = simulate(12_000, seed=0)
    # A/B on clicks per query (each query sees one ranker): queries for 80 % power at alpha 0.05
    sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    effect = b.mean() - a.mean()
    ab_queries = sample_size_means(sd, effect).total
    # interleaving: every query compares both rankers; sign test over the decided queries
    pilot = preference_test(outcomes)
    il_queries = sample_size_sign_test(pilot.wins_b / (pilot.wins_a + pilot.wins_b), pilot.ties / pilot.queries)
    assert effect > 0 and pilot.preferred == "B"
    assert ab_queries >= 4 * il_queries, (ab_queries, il_queries)      # ~6x here (6-9x across seeds)

    # And on an actual budget of 3 000 queries: interleaving finds B, the A/B has under 50 % power.
    budget = 3000
    assert preference_test(outcomes[:budget]).preferred == "B"
    assert power_means(sd, effect, budget // 2) < 0.5


@pytest.mark.parametrize("call, fragment", [
    (lambda: sign_test(-1, 5), "wins_a"),
    (lambda: preference_test(["A", "B"], alpha=2), "alpha"),
    (lambda: sample_size_sign_test(0.6, alpha=0), "alpha"),
    (lambda: sample_size_sign_test(0.6, alpha=1.5), "alpha"),
    (lambda: sample_size_sign_test(0.6, power=1), "power"),
    (lambda: team_draft([1, 2], [2, 3], length=-1), "length"),
])
def test_interleaving_refuses_impossible_inputs(call, fragment):
    """alpha=1.5 planned 1 query and alpha=0 overflowed; a negative win count was scipy's ValueError; a
    negative length silently showed nothing."""
    with pytest.raises(ExperimentError, match=fragment):
        call()
