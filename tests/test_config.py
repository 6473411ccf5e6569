"""loopstack.yaml parsing: backends per store, env overrides, and errors that name the fix."""
from __future__ import annotations

import pytest

from loopstack.config import DEFAULT_YAML, load_config, parse_config
from loopstack.errors import ConfigError


def test_default_yaml_parses_to_embedded_defaults(tmp_path):
    (tmp_path / "loopstack.yaml").write_text(DEFAULT_YAML.format(name="x"))
    cfg = load_config(tmp_path, env={})
    assert (cfg.name, cfg.log.backend, cfg.offline.engine, cfg.metadata.backend) == ("x", "local", "duckdb", "sqlite")
    assert cfg.metadata_url(tmp_path) == f"sqlite:///{tmp_path / 'data/metadata.db'}"


def test_env_overrides_every_section_and_wins_over_file():
    cfg = parse_config({"log": {"backend": "local"}},
                       env={"LOOPSTACK_LOG__BACKEND": "redis", "LOOPSTACK_LOG__URL": "redis://127.0.0.1:1/2",
                            "LOOPSTACK_OFFLINE__THREADS": "2", "LOOPSTACK_METADATA__BACKEND": "postgresql",
                            "LOOPSTACK_METADATA__URL": "postgresql+psycopg://u@127.0.0.1/db",
                            "LOOPSTACK_NAME": "from-env", "LOOPSTACK_TEST_REDIS_URL": "ignored"})
    assert cfg.log.backend == "redis" and cfg.log.url == "redis://127.0.0.1:1/2"
    assert cfg.offline.threads == 2 and cfg.name == "from-env"
    assert cfg.metadata_url(None) == "postgresql+psycopg://u@127.0.0.1/db"


@pytest.mark.parametrize("raw, env, message", [
    ({"log": {"backend": "kafkaa"}}, {}, r"log.backend = 'kafkaa' is not allowed; choose one of: local, redis"),
    ({"metadata": {"backend": "mysql"}}, {}, r"metadata.backend = 'mysql'.*sqlite, postgresql"),
    ({"log": {"bakend": "local"}}, {}, r"unknown key\(s\) log.bakend.*allowed keys of \[log\] are backend"),
    ({"logs": {}}, {}, r"unknown section\(s\) logs"),
    ({"offline": {"threads": "two"}}, {}, r"offline.threads = 'two' is not an integer"),
    ({"log": "local"}, {}, r"section 'log' must be a mapping"),
    ({}, {"LOOPSTACK_LOGG__BACKEND": "x"}, r"LOOPSTACK_LOGG__BACKEND: no section 'logg'"),
    ({}, {"LOOPSTACK_LOG__BACKEND": "nope"}, r"log.backend = 'nope' is not allowed"),
    ({"online": {"populate": "maybe"}}, {}, r"online.populate = 'maybe' is not true or false"),
    ({"online": {"cache_mb": -1}}, {}, r"online.cache_mb = -1 must be >= 0"),
    ({}, {"LOOPSTACK_ONLINE__CACHE_MB": "lots"}, r"online.cache_mb = 'lots' is not an integer"),
])
def test_invalid_config_names_key_value_and_allowed(raw, env, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, env=env)


@pytest.mark.parametrize("raw, env, want", [
    ({}, {}, True), ({"online": {"populate": False}}, {}, False), ({"online": {"populate": "yes"}}, {}, True),
    ({"online": {"populate": True}}, {"LOOPSTACK_ONLINE__POPULATE": "off"}, False),
    ({}, {"LOOPSTACK_ONLINE__POPULATE": "0"}, False),
])
def test_boolean_settings_take_yaml_booleans_and_words(raw, env, want):
    assert parse_config(raw, env=env).online.populate is want


def test_postgresql_without_url_says_what_to_set():
    cfg = parse_config({"metadata": {"backend": "postgresql"}}, env={})
    with pytest.raises(ConfigError, match="metadata.url is required"):
        cfg.metadata_url(None)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="loopstack init"):
        load_config(tmp_path, env={})
    (tmp_path / "loopstack.yaml").write_text("log: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path, env={})


@pytest.mark.parametrize("raw, message", [
    ({1: "x", "log": {}, None: 2}, r"unknown section\(s\) 1, None in loopstack.yaml"),
    ({"log": {3: "x", True: "y"}}, r"unknown key\(s\) log.3, log.True"),
])
def test_keys_that_are_not_words_are_named_not_a_type_error(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, env={})


@pytest.mark.parametrize("value", [float("inf"), 2.7, "2.7", True, "1e400", float("nan")])
def test_integer_keys_refuse_fractions_booleans_and_infinity(value):
    with pytest.raises(ConfigError, match=r"online.cache_mb = .* is not an integer"):
        parse_config({"online": {"cache_mb": value}}, env={})


@pytest.mark.parametrize("value, want", [(4, 4), (4.0, 4), ("4", 4), (" 4 ", 4), ("4.0", 4), ("1e6", 1_000_000)])
def test_integer_keys_take_whole_numbers_however_written(value, want):
    assert parse_config({"online": {"cache_mb": value}}, env={}).online.cache_mb == want


def test_a_boolean_is_not_a_number():
    with pytest.raises(ConfigError, match=r"monitoring.threshold = True is not a number"):
        parse_config({"monitoring": {"threshold": True}}, env={})


def test_env_override_of_a_section_that_is_not_a_mapping_names_the_section():
    with pytest.raises(ConfigError, match=r"section 'log' must be a mapping of keys, got \['a'\]"):
        parse_config({"log": ["a"]}, env={"LOOPSTACK_LOG__BACKEND": "redis"})


def test_config_file_that_is_a_folder_or_not_utf8_is_a_config_error(tmp_path):
    (tmp_path / "loopstack.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"cannot read .*loopstack.yaml: Is a directory"):
        load_config(tmp_path, env={})
    (tmp_path / "loopstack.yaml").rmdir()
    (tmp_path / "loopstack.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"loopstack.yaml is not UTF-8 text .*at byte 9"):
        load_config(tmp_path, env={})


@pytest.mark.parametrize("raw, message", [
    ({"offline": {"threads": -3}}, r"offline.threads = -3 must be >= 0"),
    ({"offline": {"index_min_rows": -1}}, r"offline.index_min_rows = -1 must be >= 0"),
    ({"offline": {"memory_limit": "lots"}}, r"offline.memory_limit = 'lots' is not an amount of memory"),
    ({"offline": {"memory_limit": "-1GB"}}, r"offline.memory_limit = '-1GB' is not an amount"),
    ({"offline": {"memory_limit": 4096}}, r"offline.memory_limit = '4096' is not an amount"),
    ({"online": {"spin_us": -5}}, r"online.spin_us = -5 must be >= 0"),
])
def test_out_of_range_sizes_are_refused_when_read(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, env={})


@pytest.mark.parametrize("limit", ["8GB", "512 MiB", "80%", "1.5gb", "4g"])
def test_memory_limits_duckdb_understands_are_kept(limit):
    assert parse_config({"offline": {"memory_limit": limit}}, env={}).offline.memory_limit == limit


@pytest.mark.parametrize("raw, env, where", [
    ({"name": ""}, {}, "name"), ({"artifacts": {"path": "  "}}, {}, "artifacts.path"),
    ({}, {"LOOPSTACK_LOG__PATH": ""}, "log.path"), ({"metadata": {"path": ""}}, {}, "metadata.path"),
    ({}, {"LOOPSTACK_DEFINITIONS": ""}, "definitions"),
])
def test_empty_text_values_are_refused_not_resolved_to_the_project_folder(raw, env, where):
    with pytest.raises(ConfigError, match=rf"^{where} must not be empty"):
        parse_config(raw, env=env)


def test_an_empty_prefix_is_kept_it_means_no_namespace():
    assert parse_config({"log": {"prefix": ""}}, env={}).log.prefix == ""


@pytest.mark.parametrize("meta, message", [
    ({"url": "not a url"}, r"metadata.url = 'not a url' is not a database URL"),
    ({"url": "mysql://u:secret@h/db"}, r"metadata.url = 'mysql://u:\*\*\*@h/db' is a 'mysql' URL; .* sqlite or "
                                       r"postgresql"),
    ({"url": "postgres://u@h/db", "backend": "postgresql"}, r"is a 'postgres' URL; .*postgresql\+psycopg://"),
    ({"url": "postgresql+psycopg://u@h/db"}, r"is a postgresql URL but metadata.backend is sqlite; set "
                                             r"metadata.backend: postgresql"),
    ({"url": "sqlite:////tmp/x.db", "backend": "postgresql"}, r"is a sqlite URL but metadata.backend is postgresql"),
])
def test_metadata_url_of_the_wrong_kind_names_the_key(meta, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"metadata": meta}, env={})


def test_an_override_with_one_underscore_is_not_silently_ignored():
    with pytest.raises(ConfigError, match=r"LOOPSTACK_LOG_BACKEND is not read: write LOOPSTACK_LOG__BACKEND"):
        parse_config({}, env={"LOOPSTACK_LOG_BACKEND": "redis"})
    with pytest.raises(ConfigError, match=r"LOOPSTACK_OFFLINE_SPARK_CONF is not read: .* offline.spark_conf"):
        parse_config({}, env={"LOOPSTACK_OFFLINE_SPARK_CONF": "{}"})
    # loopstack's other variables are not config overrides
    parse_config({}, env={"LOOPSTACK_LLM_CACHE_DIR": "/tmp", "LOOPSTACK_SERVE_PROJECT": ".", "LOOPSTACK_NAME_X": "y"})


@pytest.mark.parametrize("url", ["127.0.0.1:9000/alerts", "file:///tmp/alerts", "ftp://h/x", "http://", "hooks"])
def test_webhook_url_must_be_http(url):
    with pytest.raises(ConfigError, match=r"monitoring.webhook_url = .* is not an http\(s\) URL"):
        parse_config({"monitoring": {"webhook_url": url}}, env={})


def test_webhook_url_over_https_is_kept():
    url = "https://hooks.example.com/T0/B1?x=1"
    assert parse_config({"monitoring": {"webhook_url": url}}, env={}).monitoring.webhook_url == url


def test_a_relative_sqlite_metadata_url_is_under_the_project_not_the_working_folder(tmp_path, monkeypatch):
    from pathlib import Path
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = parse_config({"metadata": {"url": "sqlite:///data/m.db"}}, env={})
    assert cfg.metadata_url(tmp_path / "proj") == f"sqlite:///{tmp_path / 'proj' / 'data' / 'm.db'}"
    cfg = parse_config({"metadata": {"url": "sqlite:///~/m.db"}}, env={})
    assert cfg.metadata_url(tmp_path / "proj") == f"sqlite:///{tmp_path / 'home' / 'm.db'}"
    for url in ("sqlite:////abs/m.db", "sqlite://"):  # absolute and in-memory stay as written
        assert parse_config({"metadata": {"url": url}}, env={}).metadata_url(Path("/elsewhere")) == url
