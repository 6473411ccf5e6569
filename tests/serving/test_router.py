"""The traffic router: policy from registry states, sticky assignment, precedence, validation."""
from __future__ import annotations

from collections import Counter

import pytest

from loopstack.serving import NoRoute, ServingConfigError, ServingError, TrafficPolicy, policy_from_states, route
from loopstack.serving.router import route_many

USERS = [f"user-{i}" for i in range(20_000)]


def share(policy, variant, users=USERS):
    return sum(route(policy, u, "r").variant == variant for u in users) / len(users)


# ---------------------------------------------------------------- route
def test_canary_percent_within_tolerance():
    for pct in (1.0, 5.0, 25.0):
        p = TrafficPolicy("spam", production=2, canary=3, canary_percent=pct)
        assert abs(share(p, "canary") - pct / 100) < 0.01


def test_assignment_is_sticky_and_monotonic_in_percent():
    p5 = TrafficPolicy("spam", production=2, canary=3, canary_percent=5)
    p20 = TrafficPolicy("spam", production=2, canary=3, canary_percent=20)
    in5 = {u for u in USERS[:5000] if route(p5, u, "r1").variant == "canary"}
    assert in5 == {u for u in USERS[:5000] if route(p5, u, "other-request").variant == "canary"}
    in20 = {u for u in USERS[:5000] if route(p20, u, "r").variant == "canary"}
    assert in5 < in20   # raising the percentage only adds users


def test_rules_use_independent_salts():
    p = TrafficPolicy("spam", production=2, canary=3, canary_percent=50, holdback=1, holdback_percent=20)
    canary_bucket = TrafficPolicy("spam", production=2, canary=3, canary_percent=50)
    held = {u for u in USERS if route(p, u, "r").variant == "holdback"}
    would_be_canary = {u for u in USERS if route(canary_bucket, u, "r").variant == "canary"}
    # independence: about half of the held-back users would have been in the canary
    assert abs(len(held & would_be_canary) / len(held) - 0.5) < 0.03
    assert abs(share(p, "canary") - 0.8 * 0.5) < 0.015


def test_precedence_holdback_then_experiment_then_canary():
    p = TrafficPolicy("spam", production=5, canary=7, canary_percent=100, experiment={"v6": 6},
                      experiment_percent=100, holdback=4, holdback_percent=10)
    counts = Counter(route(p, u, "r").variant for u in USERS[:10_000])
    assert counts["canary"] == 0 and counts["production"] == 0   # experiment (100%) shadows the canary
    assert abs(counts["holdback"] / 10_000 - 0.10) < 0.012
    assert abs(counts["control"] / 10_000 - 0.45) < 0.02 and abs(counts["v6"] / 10_000 - 0.45) < 0.02
    half = TrafficPolicy("spam", production=5, canary=7, canary_percent=100, experiment={"v6": 6},
                         experiment_percent=50)
    counts = Counter(route(half, u, "r").variant for u in USERS[:10_000])
    assert abs(counts["canary"] / 10_000 - 0.5) < 0.02 and counts["production"] == 0


def test_experiment_weights_and_versions():
    p = TrafficPolicy("spam", production=5, experiment={"v6": 6, "v7": 7},
                      experiment_weights={"control": 2, "v6": 1, "v7": 1})
    assert dict(p.variants) == {"control": 5, "v6": 6, "v7": 7}
    assert p.experiment_salt == "spam:exp:6,7"
    got = {u: route(p, u, "r") for u in USERS[:8000]}
    counts = Counter(a.variant for a in got.values())
    assert abs(counts["control"] / 8000 - 0.5) < 0.02
    assert all(a.version == p.variants[a.variant] for a in got.values())


def test_no_user_id_goes_to_production_with_shadow():
    p = TrafficPolicy("spam", production=2, canary=3, canary_percent=100, shadow=4, experiment={"v6": 6},
                      holdback=1, holdback_percent=100)
    for uid in (None, ""):
        a = route(p, uid, "req-1")
        assert (a.variant, a.version, a.shadow_version, a.bucket) == ("production", 2, 4, -1)


def test_shadow_only_copies_production_traffic_and_samples_by_request():
    p = TrafficPolicy("spam", production=2, shadow=4, shadow_sample=0.25, canary=3, canary_percent=10)
    assigned = [route(p, "same-user-not-canary" if i % 2 else None, f"req-{i}") for i in range(8000)]
    prod = [a for a in assigned if a.variant == "production"]
    assert abs(sum(a.shadow_version == 4 for a in prod) / len(prod) - 0.25) < 0.03
    canary_user = next(u for u in USERS if route(p, u, "r").variant == "canary")
    assert all(route(p, canary_user, f"req-{i}").shadow_version is None for i in range(200))


def test_no_production_serves_the_only_rolled_out_version():
    assert route(TrafficPolicy("spam", production=None, canary=3), "u1", "r").version == 3
    assert route(TrafficPolicy("spam", production=None, experiment={"v6": 6}), None, "r").variant == "v6"
    with pytest.raises(NoRoute, match="no production version") as err:
        route(TrafficPolicy("spam", production=None, shadow=4), "u1", "r")
    assert isinstance(err.value, ServingError)


@pytest.mark.parametrize("kwargs,fragment", [
    ({"canary_percent": 101}, "canary_percent=101"), ({"canary_percent": -1}, "canary_percent=-1"),
    ({"holdback_percent": float("nan")}, "holdback_percent"), ({"shadow_sample": 1.5}, "shadow_sample=1.5"),
    ({"experiment": {"v6": 6}, "experiment_weights": {"v6": -1}}, "v6"),
    ({"experiment": {"v6": 6}, "experiment_weights": {"control": 0, "v6": 0}}, "positive"),
    ({"experiment": {"v6": 6}, "experiment_weights": {"v9": 1}}, "unknown: \\['v9'\\]"),
    ({"canary": 0}, "canary=0"), ({"production": "2"}, "production='2'"), ({"experiment": {"v6": "x"}}, "v6"),
])
def test_bad_policy_names_the_value(kwargs, fragment):
    base = {"model": "spam", "production": 2}
    with pytest.raises(ServingConfigError, match=fragment):
        TrafficPolicy(**{**base, **kwargs})


# ---------------------------------------------------------------- policy_from_states
STATES = {1: "archived", 2: "archived", 3: "production", 4: "shadow", 5: "shadow", 6: "canary", 7: "experiment",
          8: "experiment", 9: "candidate"}


def test_policy_from_states_picks_versions():
    p = policy_from_states("spam", STATES, [1, 2, 3], {})
    assert (p.production, p.shadow, p.canary) == (3, 5, 6)
    assert dict(p.experiment) == {"control": 3, "v7": 7, "v8": 8}
    assert p.holdback is None and p.fallback == 2   # holdback is opt-in; fallback: previous production
    assert p.canary_percent == 5.0 and p.notes == ()
    assert p.versions() == {2, 3, 5, 6, 7, 8}


def test_policy_from_states_applies_settings():
    settings = {"canary_percent": 20, "shadow_sample": 0.1, "experiment_weights": {"control": 1, "v7": 3},
                "experiment_percent": 40, "experiment_salt": "exp-42", "holdback_percent": 3, "fallback": 1,
                "baseline": {"label": "ham"}}
    p = policy_from_states("spam", STATES, [1, 2, 3], settings)
    assert (p.canary_percent, p.shadow_sample, p.experiment_percent) == (20, 0.1, 40)
    assert dict(p.experiment_weights) == {"control": 1, "v7": 3, "v8": 0}
    assert p.experiment_salt == "exp-42" and (p.holdback, p.holdback_percent) == (2, 3)
    assert p.fallback == 1 and p.baseline == {"label": "ham"}


def test_stale_settings_are_noted_not_fatal():
    p = policy_from_states("spam", {3: "production", 7: "experiment"}, [3],
                           {"experiment_weights": {"v5": 1}, "fallback": 42, "holdback_percent": 5})
    assert dict(p.experiment_weights) == {"control": 1, "v7": 1}
    assert p.fallback is None and p.holdback is None
    assert len(p.notes) == 3 and any("v5" in n for n in p.notes) and any("42" in n for n in p.notes)


def test_policy_from_states_after_rollback_and_without_history():
    # history top is not in production any more (rolled back to 2): fall back to the version in production
    p = policy_from_states("spam", {2: "production", 3: "archived"}, [2, 3], {})
    assert p.production == 2 and p.fallback == 3
    p = policy_from_states("spam", {"1": "Candidate", "2": "canary"}, [], {})
    assert p.production is None and p.canary == 2 and p.experiment == {}


@pytest.mark.parametrize("settings,fragment", [
    ({"canary_pct": 5}, "canary_pct"), ({"canary_percent": "5"}, "canary_percent='5'"),
    ({"experiment_weights": [1, 2]}, "experiment_weights"), ({"experiment_weights": {"v7": -2}}, "v7"),
    ({"fallback": 1.5}, "fallback=1.5"), ({"experiment_salt": 3}, "experiment_salt=3"),
    ({"shadow_sample": 50}, "shadow_sample=50"),
])
def test_bad_settings_name_the_value(settings, fragment):
    with pytest.raises(ServingConfigError, match=fragment):
        policy_from_states("spam", STATES, [3], settings)


@pytest.mark.parametrize("policy", [
    TrafficPolicy("spam", production=2),
    TrafficPolicy("spam", production=2, canary=3, canary_percent=30),
    TrafficPolicy("spam", production=2, canary=3, canary_percent=30, holdback=1, holdback_percent=20),
    TrafficPolicy("spam", production=2, experiment={"v4": 4}, experiment_percent=50),
    TrafficPolicy("spam", production=2, shadow=5),                        # every production request shadowed
    TrafficPolicy("spam", production=2, shadow=5, shadow_sample=0.3),     # sampled per request id
    TrafficPolicy("spam", production=None, canary=3)])
def test_route_many_assigns_exactly_as_route_does_one_by_one(policy):
    """A batch request routes each distinct user once: the result must equal routing every instance on its
    own (sticky by user; shadow sampling per request id), for batches of one user, none, and many."""
    batches = [["u-1"] * 32, [None] * 32, [f"user-{i % 7}" for i in range(64)],
               [None, "u-1", "", 5, "5", None, "u-2"] * 5]
    for users in batches:
        rids = [f"req:{i}" for i in range(len(users))]
        want = [route(policy, u, r) for u, r in zip(users, rids)]
        assert route_many(policy, users, rids) == want
    if policy.shadow is not None and policy.shadow_sample < 1:   # the per-request-id sample really varies
        shadowed = [a.shadow_version for a in route_many(policy, ["u"] * 200, [f"r{i}" for i in range(200)])]
        assert 0 < shadowed.count(5) < 200
