"""Stored traffic settings: validation, merge/unset, revisions, the migration step."""
from __future__ import annotations

import pytest

from loopstack.meta.db import MetadataStore
from loopstack.serving.errors import ServingConfigError
from loopstack.serving.policy_store import PolicyStore, parse_weights, validate_settings


def test_weights_parse_from_the_cli_form():
    assert parse_weights("control=50, v3=50") == {"control": 50.0, "v3": 50.0}
    assert parse_weights({"a": 1}) == {"a": 1}
    with pytest.raises(ServingConfigError, match="variant=weight"):
        parse_weights("control:50")


@pytest.mark.parametrize("text,words", [
    ("control=50,control=20", "'control' is given twice"),
    (",,", "at least one variant=weight pair"),
    ("", "at least one variant=weight pair"),
])
def test_weights_given_twice_or_not_at_all_are_refused_not_stored(text, words):
    with pytest.raises(ServingConfigError, match=words):
        parse_weights(text)


@pytest.mark.parametrize("settings,words", [
    ({"canary_percent": 120}, "canary_percent"),
    ({"shadow_sample": 2}, "shadow_sample"),
    ({"fallback": 0}, "fallback"),
    ({"colour": 1}, "unknown traffic setting"),
    ({"experiment_weights": "control=0,v2=0"}, "positive share"),
    ({"experiment_weights": "control=50,treatment=50"}, r"for \['treatment'\].*'v<version>'"),
    ({"experiment_weights": {"v0": 1}}, r"for \['v0'\]"),
    ({"baseline": float("nan")}, "baseline"),
])
def test_bad_settings_name_the_key(settings, words):
    with pytest.raises(ServingConfigError, match=words):
        validate_settings(settings)


def test_update_merges_unsets_and_bumps_the_revision(meta_url):
    store = PolicyStore(MetadataStore(meta_url))
    assert store.get("spam") == {} and store.revision("spam") == 0 and store.revisions() == {}
    assert store.update("spam", {"canary_percent": 10, "baseline": 0.5}) == {"canary_percent": 10.0, "baseline": 0.5}
    assert store.update("spam", {"experiment_weights": "control=1,v2=3"})["experiment_weights"] == {
        "control": 1.0, "v2": 3.0}
    assert store.revision("spam") == 2
    assert store.update("spam", {"baseline": None}) == {"canary_percent": 10.0,
                                                        "experiment_weights": {"control": 1.0, "v2": 3.0}}
    assert store.update("spam", {"shadow_sample": 0.5}, replace=True) == {"shadow_sample": 0.5}
    assert store.revisions() == {"spam": 4}
    with pytest.raises(ServingConfigError):
        store.update("spam", {"canary_percent": -1})
    assert store.revision("spam") == 4   # a refused change changes nothing


def test_concurrent_updates_of_different_keys_lose_none(meta_url):
    """Read-merge-write under a per-model lock: 4 threads x 30 updates, each setting its own key, end
    with every thread's last value and one revision per update (a lost update would drop a key)."""
    from concurrent.futures import ThreadPoolExecutor
    meta = MetadataStore(meta_url)
    store = PolicyStore(meta)
    keys = ["canary_percent", "shadow_sample", "holdback_percent", "fallback"]
    values = {"canary_percent": lambda i: float(i + 1), "shadow_sample": lambda i: (i + 1) / 100,
              "holdback_percent": lambda i: (i + 1) / 10, "fallback": lambda i: i + 1}

    def worker(key):
        for i in range(30):
            store.update("spam", {key: values[key](i)}, actor=key)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(worker, keys))
    assert store.get("spam") == {k: values[k](29) for k in keys}
    assert store.revision("spam") == 120
    meta.close()
