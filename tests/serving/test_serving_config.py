"""ServingConfig (the settings of `loopstack serve`): bad settings fail on construction, naming the key."""
from __future__ import annotations

import pytest

from loopstack.serving.config import ModelSpec, ServingConfig
from loopstack.serving.errors import ServingConfigError


@pytest.mark.parametrize("breaker, fragment", [
    ({"windows_s": 5}, r"unknown circuit breaker setting\(s\) \['windows_s'\]"),
    ({"window_s": -1}, "window_s=-1"),
    ({"max_error_rate": float("nan")}, "max_error_rate=nan"),
    ({"min_requests": 0}, "min_requests=0"),
    ([("window_s", 5)], "use a mapping of circuit breaker settings"),
])
def test_a_bad_breaker_setting_fails_the_config_not_every_version_load(breaker, fragment):
    with pytest.raises(ServingConfigError, match=fragment):
        ServingConfig(breaker=breaker)


def test_a_partial_breaker_keeps_the_other_defaults():
    assert ServingConfig(breaker={"window_s": 2.0}).breaker == {"window_s": 2.0}


@pytest.mark.parametrize("value", ["0.5", None, True])
def test_feature_sample_must_be_a_number(value):
    with pytest.raises(ServingConfigError, match="feature_sample"):
        ServingConfig(feature_sample=value)


@pytest.mark.parametrize("text", ["spam@", "models:/spam@", "spam@ ", "@production", "spam/3"])
def test_a_model_ref_without_its_alias_or_name_is_refused(text):
    """`spam@` (e.g. spam@$ALIAS with ALIAS unset) must not quietly serve production."""
    with pytest.raises(ServingConfigError, match="give a registered model name, optionally with an alias"):
        ModelSpec.parse(text)


def test_model_refs_parse():
    assert ModelSpec.parse(" models:/spam@champion ") == ModelSpec("spam", "champion")
    assert ModelSpec.parse("spam") == ModelSpec("spam", "production")


def test_served_models_may_be_given_as_text_and_bad_ones_are_named():
    """Text was iterated as ModelSpecs (AttributeError: 'str' object has no attribute 'name'; "spam" alone as
    its four letters); a ModelSpec with a bad alias was accepted."""
    assert ServingConfig(models=("spam", "ham@champion")).models == (ModelSpec("spam"), ModelSpec("ham", "champion"))
    assert ServingConfig(models="spam").models == ServingConfig(models=[ModelSpec("spam")]).models == (
        ModelSpec("spam"),)
    with pytest.raises(ServingConfigError, match="invalid alias 'Bad!'"):
        ServingConfig(models=(ModelSpec("spam", "Bad!"),))
    with pytest.raises(ServingConfigError, match="42 is not a model"):
        ServingConfig(models=(42,))
    with pytest.raises(ServingConfigError, match="given more than once"):
        ServingConfig(models=("spam", ModelSpec("spam", "champion")))


@pytest.mark.parametrize("key, value, fragment", [
    # a wait past the platform's longest timed wait (OverflowError): the watcher thread died after its first pass,
    # shutdown's drain raised
    ("poll_interval_s", 1e300, "at most 86_400"), ("drain_timeout_s", 1e300, "at most 86_400"),
    ("load_timeout_s", 1e12, "at most 86_400"), ("batch_timeout_s", 86_401, "at most 86_400"),
    # a default deadline or budget longer than any request may ask for (deadline_ms <= 600000)
    ("default_deadline_ms", 1e9, "at most 600_000"), ("model_budget_ms", 600_001, "at most 600_000"),
    ("fallback_budget_ms", float("inf"), "at most 600_000"),
])
def test_time_settings_have_an_upper_bound(key, value, fragment):
    with pytest.raises(ServingConfigError, match=f"{key}=.* is not allowed: use a number .*{fragment}"):
        ServingConfig(**{key: value})


def test_time_settings_at_their_bounds_are_accepted():
    cfg = ServingConfig(poll_interval_s=86_400, drain_timeout_s=0, default_deadline_ms=600_000, cache_ttl_s=1e9)
    assert (cfg.poll_interval_s, cfg.default_deadline_ms, cfg.cache_ttl_s) == (86_400, 600_000, 1e9)
