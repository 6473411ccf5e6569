"""Bucketing and weighted assignment: stable across versions, uniform, sticky, independent per salt."""
from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from loopstack.experiments import AssignmentError, assign, bucket

# Computed once with the released algorithm. If one of these changes, every running experiment and
# canary reshuffles its users: that is a breaking change, not a refactor.
KNOWN = [("alice", "spam:canary", 3507), ("bob", "spam:canary", 9018), ("user-42", "exp-1", 9192),
         ("", "", 5896), ("héllo", "salt", 9159)]


@pytest.mark.parametrize("unit,salt,expected", KNOWN)
def test_known_buckets_never_change(unit, salt, expected):
    assert bucket(unit, salt) == expected


def test_algorithm_is_blake2b_of_salt_nul_unit():
    digest = hashlib.blake2b(b"spam:canary\x00alice", digest_size=8).digest()
    assert bucket("alice", "spam:canary", 1000) == int.from_bytes(digest, "big") % 1000


def test_known_assignments_never_change():
    weights = {"a": 1, "b": 1, "c": 2}
    assert (assign("alice", "exp-1", weights), assign("bob", "exp-1", weights)) == ("c", "b")


def test_uniform_over_ten_buckets():
    n = 50_000
    counts = Counter(bucket(f"user-{i}", "uniformity", 10) for i in range(n))
    expected = n / 10
    chi2 = sum((counts[b] - expected) ** 2 / expected for b in range(10))
    assert set(counts) == set(range(10))
    assert chi2 < 27.9  # 9 degrees of freedom, p = 0.001


def test_salts_are_independent():
    n = 20_000
    ids = [f"u{i}" for i in range(n)]
    in_a = {u for u in ids if bucket(u, "salt-a") < 2000}   # 20 %
    in_b = {u for u in ids if bucket(u, "salt-b") < 5000}   # 50 %
    assert abs(len(in_a & in_b) / n - 0.10) < 0.01


def test_bucket_rejects_bad_bucket_count():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(AssignmentError, match="buckets"):
            bucket("u", "s", bad)


def test_assign_follows_weights_and_is_sticky():
    weights = {"control": 50, "v7": 30, "v8": 20}
    n = 20_000
    got = [assign(f"u{i}", "exp", weights) for i in range(n)]
    share = Counter(got)
    for name, w in weights.items():
        assert abs(share[name] / n - w / 100) < 0.015
    assert got[:100] == [assign(f"u{i}", "exp", weights) for i in range(100)]


def test_assign_ignores_mapping_order_and_skips_zero_weights():
    a = {"x": 1.0, "y": 3.0, "z": 0}
    b = {"z": 0, "y": 3.0, "x": 1.0}
    for i in range(2000):
        va = assign(f"u{i}", "s", a)
        assert va == assign(f"u{i}", "s", b)
        assert va != "z"


@pytest.mark.parametrize("weights,fragment", [
    ({}, "empty"), ({"a": -1, "b": 2}, "'a'"), ({"a": 0, "b": 0}, "sum to 0"), ({"a": float("nan")}, "'a'"),
    ({"a": "1"}, "'a'"),
])
def test_assign_rejects_bad_weights(weights, fragment):
    with pytest.raises(AssignmentError, match=fragment):
        assign("u", "s", weights)
