"""Redis backend specifics: native consumer groups, stream IDs, few round trips per append."""
from __future__ import annotations

import uuid

import redis

from loopstack.log import TopicConfig
from loopstack.log.redis import RedisLog


def test_native_group_ids_and_round_trips(redis_url):
    prefix = f"n{uuid.uuid4().hex[:8]}"
    log = RedisLog(redis_url, prefix=prefix)
    r = redis.Redis.from_url(redis_url)
    log.create_topic(TopicConfig("ev", 2))
    calls_before = r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    log.append("ev", [{"i": i} for i in range(10_000)])
    calls = r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0) - calls_before
    assert calls <= 3  # one script call per touched partition, sent in one pipeline
    ids = [e[0] for e in r.xrange(f"{prefix}:s:ev:0", count=3)]
    assert ids == [b"0-1", b"0-2", b"0-3"]
    c = log.consumer("ev", "tools")
    c.poll(10)
    c.commit()
    groups = {g["name"]: g for g in r.xinfo_groups(f"{prefix}:s:ev:0")}
    pos = c.position()[0]
    assert groups[b"tools"]["last-delivered-id"] == f"0-{pos}".encode()
    assert log.committed("ev", "tools")[0] == pos
    assert log.groups("ev") == ["tools"]
    log.close()


def test_a_malformed_log_url_is_a_config_error_naming_the_key():
    import pytest

    from loopstack.errors import ConfigError
    for url in ("notaurl", "redis://127.0.0.1:notaport/0"):
        with pytest.raises(ConfigError, match="log.url"):
            RedisLog(url)
